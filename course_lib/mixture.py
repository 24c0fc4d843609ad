"""A labelled Gaussian mixture under the forward process: every score in closed form (lesson 03).

Data: K Gaussian components, each belonging to one of C classes,

    p_0(x) = Σ_k π_k N(x; μ_k, Σ_k),     p_0(x | y) = Σ_{k ∈ y} π_k N(x; μ_k, Σ_k) / π(y),
    π(y) = Σ_{k ∈ y} π_k = p(y).

The forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I) adds independent Gaussian noise to a
scaled x_0, so each component stays Gaussian and the mixture stays a mixture (lesson 03, eq. A):

    p_t(x) = Σ_k π_k N(x; m_k, C_k),     m_k = √ᾱ_t μ_k,     C_k = ᾱ_t Σ_k + (1 - ᾱ_t) I.

With r_k(x) ∝ π_k N(x; m_k, C_k) the responsibilities (the posterior over components) and
s_k(x) = -C_k⁻¹ (x - m_k) the score of one component, everything a guided sampler needs is exact:

==============================  ==================================================================
code name                       formula
==============================  ==================================================================
``noised_components``           (m_k, C_k) above                                          (eq. A)
``noised_mixture``              p_t as a GaussianMixture (to sample it directly)
``log_prob``                    log p_t(x) = log Σ_k π_k N(x; m_k, C_k); given y: log p_t(x | y)
``class_log_posterior``         log p_t(y | x) = log Σ_{k ∈ y} r_k(x)                      (Bayes)
``score``                       ∇ log p_t(x) = Σ_k r_k(x) s_k(x); given y: r restricted to y (eq. B)
``classifier_score``            ∇ log p_t(y | x) = Σ_{k ∈ y} r_k^y(x) s_k(x) - Σ_k r_k(x) s_k(x)
``posterior_mean``              E[x_0 | x_t] = Σ_k r_k(x_t) (μ_k + √ᾱ_t Σ_k C_k⁻¹ (x_t - m_k)), no score used
``tilted_log_density``          log p_0(x) + λ log p_0(y | x), the log of p_λ(x | y) up to a constant (eq. E)
``exact_eps_model``             ε*(x_t, t, y) = -√(1 - ᾱ_t) ∇ log p_t(x_t | y), for the samplers (eq. D)
``exact_classifier``            logits log p_t(x_t, y) = log π(y) + log p_t(x_t | y), for guidance
==============================  ==================================================================

Points are rows: x has shape (B, D). ``alpha_bar`` ($\\bar\\alpha_t$) is a number in [0, 1]
(1 = the clean data) or a tensor of one value per point, (B,) or (B, 1). Computations run in
float64 and results come back in x's dtype. Labels are class indices (B,); in the models for the
samplers the label ``num_classes`` means "no label" (the null class of classifier-free guidance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_finite, check_floating, check_int_range, check_labels, check_number, check_shape
from .diffusion import alpha_bar_at, eps_from_score
from .schedules import NoiseSchedule

__all__ = [
    "GaussianMixture",
    "three_spokes",
    "noised_components",
    "noised_mixture",
    "log_prob",
    "class_log_posterior",
    "score",
    "classifier_score",
    "posterior_mean",
    "tilted_log_density",
    "exact_eps_model",
    "exact_classifier",
]


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A mixture of K Gaussians in D dimensions whose components carry class labels.

    :param means: $\\mu_k$, (K, D)
    :param covariances: $\\Sigma_k$, (K, D, D), symmetric positive definite
    :param weights: $\\pi_k$, (K,), positive, summing to 1
    :param component_classes: the class of each component, LongTensor (K,) with values 0..C-1,
        every class used
    """

    means: torch.Tensor
    covariances: torch.Tensor
    weights: torch.Tensor
    component_classes: torch.Tensor

    def __post_init__(self):
        check_finite(self.means, "means")
        check_finite(self.covariances, "covariances")
        check_finite(self.weights, "weights")
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}. One row per component.")
        k, d = self.means.shape
        check_shape(self.covariances, "covariances", (k, d, d), hint="One (D, D) covariance per component.")
        check_shape(self.weights, "weights", (k,), hint="One weight per component.")
        classes = check_labels(self.component_classes, None, k, name="component_classes")
        if (self.weights <= 0).any() or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise ValueError(
                f"weights must be positive and sum to 1, got {self.weights.tolist()}. Divide by their sum."
            )
        if not torch.allclose(self.covariances, self.covariances.transpose(-1, -2)):
            raise ValueError("covariances must be symmetric. Use (S + S.transpose(-1, -2)) / 2.")
        if (torch.linalg.eigvalsh(self.covariances.double()) <= 0).any():
            raise ValueError("covariances must be positive definite (every eigenvalue > 0). Add a small multiple of I.")
        used = set(classes.tolist())
        if int(classes.min()) < 0 or used != set(range(len(used))):
            raise ValueError(
                f"component_classes must use every class 0..C-1 at least once, got {classes.tolist()}. "
                f"Renumber the classes."
            )
        # store float64 copies: every formula below runs in float64
        object.__setattr__(self, "means", self.means.double())
        # symmetric to the last bit: Cholesky reads one triangle, posterior_mean the whole matrix
        object.__setattr__(self, "covariances", (self.covariances.double() + self.covariances.double().mT) / 2)
        object.__setattr__(self, "weights", self.weights.double())
        object.__setattr__(self, "component_classes", classes)

    @property
    def num_components(self) -> int:
        """K."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """D."""
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.component_classes.max()) + 1

    @property
    def class_weights(self) -> torch.Tensor:
        """p(y) = π(y) = Σ_{k ∈ y} π_k, (C,) float64."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.component_classes, self.weights)

    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_0 ~ p_0 (or x_0 ~ p_0(x | y) for given labels), float64 on the CPU.

        :param num_samples: N
        :param generator: a CPU torch.Generator (None: torch's global one)
        :param labels: optional classes y, LongTensor (N,): draw each point from p_0(x | y_i)
        :return: (x0 (N, D), labels (N,)): the points and the class of the component each came from
        """
        check_int_range(num_samples, "num_samples", 1)
        if labels is None:
            probs = self.weights.expand(num_samples, -1)  # (N, K)
        else:
            labels = check_labels(labels, self.num_classes, num_samples).cpu()
            # π_k / π(y) inside the class, 0 outside                                  p(k | y)
            probs = self.weights * (self.component_classes[None, :] == labels[:, None])  # (N, K)
        components = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (N,)
        noise = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64)
        cholesky = torch.linalg.cholesky(self.covariances)[components]  # (N, D, D)
        # x_0 = μ_k + L_k z,  L_k L_kᵀ = Σ_k,  z ~ N(0, I)
        x0 = self.means[components] + (cholesky @ noise[:, :, None]).squeeze(-1)
        return x0, self.component_classes[components]


def three_spokes() -> GaussianMixture:
    """The mixture of lesson 03: three classes in 2-D, two components each, overlapping at the centre.

    Class y sits along the direction at 90°, 210° or 330°: an inner round blob at radius 0.7
    (std 0.45), where the three classes overlap and p(y | x) is far from 0 and 1, and an outer
    elongated blob of its own at radius 2 (std 0.45 across the spoke, 0.3 along it). Every
    component has weight 1/6, every class 1/3.
    """
    means, covariances = [], []
    for angle in (90.0, 210.0, 330.0):
        radians = math.radians(angle)
        direction = torch.tensor([math.cos(radians), math.sin(radians)], dtype=torch.float64)
        across = torch.tensor([-math.sin(radians), math.cos(radians)], dtype=torch.float64)
        means += [0.7 * direction, 2.0 * direction]
        # inner: Σ = 0.45² I;  outer: Σ = 0.45² u uᵀ + 0.3² d dᵀ  (u across the spoke, d along it)
        covariances += [0.45**2 * torch.eye(2, dtype=torch.float64),
                        0.45**2 * torch.outer(across, across) + 0.3**2 * torch.outer(direction, direction)]
    return GaussianMixture(torch.stack(means), torch.stack(covariances), torch.full((6,), 1 / 6, dtype=torch.float64),
                           torch.tensor([0, 0, 1, 1, 2, 2]))


# ---------------------------------------------------------------------------------------------- helpers


def _points(x, name: str = "x") -> torch.Tensor:
    check_floating(x, name)
    check_finite(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (B, D): one point per row, got {tuple(x.shape)}. Use {name}.reshape(-1, D).")
    return x


def _alpha_bar_column(alpha_bar, batch: int | None, device=None) -> torch.Tensor:
    """ᾱ as a float64 tensor of shape (1, 1) (one value) or (B, 1) (one per point; any B if batch is None)."""
    if isinstance(alpha_bar, torch.Tensor):
        check_floating(alpha_bar, "alpha_bar")
        values = alpha_bar.detach().to(device=device, dtype=torch.float64).reshape(-1, 1)
        if batch is not None and values.shape[0] not in (1, batch):
            raise ValueError(
                f"alpha_bar has {values.shape[0]} values for {batch} points. Give one number, or one value per point (B,)."
            )
        if values.shape[0] > 1 and bool((values == values[0]).all()):
            values = values[:1]  # one timestep for the whole batch (as samplers give it): one set of components
    else:
        values = torch.tensor([[check_number(alpha_bar, "alpha_bar")]], dtype=torch.float64, device=device)
    if (values < 0).any() or (values > 1).any():
        raise ValueError(
            f"alpha_bar must lie in [0, 1] (1 = clean data, 0 = pure noise), got values from "
            f"{float(values.min())} to {float(values.max())}. Pass schedule.alphas_cumprod[t]."
        )
    return values


def _check_mixture(mixture) -> GaussianMixture:
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}. Use three_spokes().")
    return mixture


def _log_joint_per_class(mixture: GaussianMixture, log_joint: torch.Tensor) -> torch.Tensor:
    """log p_t(x, y) = log Σ_{k ∈ y} π_k N(x; m_k, C_k) for every class, (B, C), from log_joint (B, K)."""
    classes = torch.arange(mixture.num_classes, device=log_joint.device)
    in_class = mixture.component_classes.to(log_joint.device)[None, :] == classes[:, None]  # (C, K)
    return torch.logsumexp(log_joint[:, None, :].masked_fill(~in_class, -math.inf), dim=2)


def _class_mask(mixture: GaussianMixture, labels, batch: int) -> torch.Tensor:
    """(B, K) booleans: component k belongs to the class of point b."""
    labels = check_labels(labels, mixture.num_classes, batch, name="y")
    return mixture.component_classes.to(labels.device)[None, :] == labels[:, None]


def _mixture_score(log_joint: torch.Tensor, component_scores: torch.Tensor, keep: torch.Tensor | None = None):
    """Σ_k r_k s_k with r_k ∝ π_k N(x; m_k, C_k) over the kept components (all when keep is None), (B, D)."""
    if keep is not None:
        log_joint = log_joint.masked_fill(~keep, -math.inf)
    # r_k(x) = π_k N(x; m_k, C_k) / Σ_j π_j N(x; m_j, C_j)        (the sum over the kept components)
    responsibilities = torch.softmax(log_joint, dim=1)  # (B, K)
    # ∇ log Σ_k π_k N(x; m_k, C_k) = Σ_k r_k(x) s_k(x)                                      (eq. B)
    return torch.einsum("bk,bki->bi", responsibilities, component_scores)


# ---------------------------------------------------------------------------------------------- formulas


def noised_components(mixture: GaussianMixture, alpha_bar) -> tuple[torch.Tensor, torch.Tensor]:
    """The components of p_t: means m_k and covariances C_k after the forward process (eq. A).

    :param mixture: the data's mixture p_0
    :param alpha_bar: $\\bar\\alpha_t$, a number in [0, 1] or a tensor (B,) of one value per point
    :return: (means (N, K, D), covariances (N, K, D, D)) float64, N = 1 for a number, else B
    """
    mixture = _check_mixture(mixture)
    a = _alpha_bar_column(alpha_bar, None)
    device = a.device
    identity = torch.eye(mixture.dim, dtype=torch.float64, device=device)
    # m_k = √ᾱ_t μ_k                                                                       (eq. A)
    means = a.sqrt()[:, :, None] * mixture.means.to(device)[None]  # (N, K, D)
    # C_k = ᾱ_t Σ_k + (1 - ᾱ_t) I                                                          (eq. A)
    covariances = a[:, :, None, None] * mixture.covariances.to(device)[None] + (1 - a)[:, :, None, None] * identity
    return means, covariances


def noised_mixture(mixture: GaussianMixture, alpha_bar: float) -> GaussianMixture:
    """p_t itself as a GaussianMixture: the same weights and classes, the components of eq. A.

    :param mixture: the data's mixture p_0
    :param alpha_bar: $\\bar\\alpha_t$, one number in [0, 1]
    """
    if isinstance(alpha_bar, torch.Tensor) and alpha_bar.numel() != 1:
        raise ValueError(f"noised_mixture takes one alpha_bar, got {alpha_bar.numel()} values. Use noised_components.")
    means, covariances = noised_components(mixture, alpha_bar)
    return GaussianMixture(means[0], covariances[0], mixture.weights, mixture.component_classes)


def _components(mixture: GaussianMixture, x: torch.Tensor, alpha_bar):
    """log π_k N(x; m_k, C_k) = log p_t(x, k) (B, K) and the component scores s_k(x) (B, K, D), in float64."""
    x = _points(x).double()
    if x.shape[1] != mixture.dim:
        raise ValueError(f"x has points of dimension {x.shape[1]}, the mixture is {mixture.dim}-dimensional.")
    means, covariances = noised_components(mixture, _alpha_bar_column(alpha_bar, x.shape[0], x.device).reshape(-1))
    cholesky = torch.linalg.cholesky(covariances)  # (N, K, D, D)
    precision = torch.cholesky_inverse(cholesky)  # C_k⁻¹
    difference = x[:, None, :] - means  # (B, K, D)
    # s_k(x) = ∇ log N(x; m_k, C_k) = -C_k⁻¹ (x - m_k)          (einsum: far faster than matmul for 2x2 blocks)
    if precision.shape[0] == 1:
        component_scores = -torch.einsum("kij,bkj->bki", precision[0], difference)  # (B, K, D)
    else:
        component_scores = -torch.einsum("bkij,bkj->bki", precision, difference)
    # log N(x; m, C) = -½ (x - m)ᵀ C⁻¹ (x - m) - ½ log det C - (D/2) log 2π,  log det C = 2 Σ log diag L
    log_det = 2 * torch.diagonal(cholesky, dim1=-2, dim2=-1).log().sum(-1)  # (N, K)
    log_normal = (0.5 * torch.einsum("bki,bki->bk", difference, component_scores) - 0.5 * log_det
                  - 0.5 * mixture.dim * math.log(2 * math.pi))
    return mixture.weights.to(x.device).log() + log_normal, component_scores


def log_prob(mixture: GaussianMixture, x: torch.Tensor, alpha_bar, y: torch.Tensor | None = None) -> torch.Tensor:
    """log p_t(x), or log p_t(x | y) when labels are given, (B,) in x's dtype.

    :param mixture: the data's mixture p_0
    :param x: points $x_t$, (B, D)
    :param alpha_bar: $\\bar\\alpha_t$, a number or one value per point
    :param y: optional classes, LongTensor (B,)
    """
    mixture = _check_mixture(mixture)
    log_joint, _ = _components(mixture, x, alpha_bar)  # (B, K)
    if y is None:
        # log p_t(x) = log Σ_k π_k N(x; m_k, C_k)
        return torch.logsumexp(log_joint, dim=1).to(x.dtype)
    mask = _class_mask(mixture, y, x.shape[0])
    # log p_t(x | y) = log Σ_{k ∈ y} π_k N(x; m_k, C_k) - log π(y)
    log_joint_class = torch.logsumexp(log_joint.masked_fill(~mask, -math.inf), dim=1)
    return (log_joint_class - mixture.class_weights.to(x.device).log()[y]).to(x.dtype)


def class_log_posterior(mixture: GaussianMixture, x: torch.Tensor, alpha_bar) -> torch.Tensor:
    """log p_t(y | x) for every class y: the exact (Bayes) classifier, (B, C) in x's dtype.

    :param mixture: the data's mixture p_0
    :param x: points $x_t$, (B, D)
    :param alpha_bar: $\\bar\\alpha_t$, a number or one value per point
    """
    mixture = _check_mixture(mixture)
    log_joint, _ = _components(mixture, x, alpha_bar)  # (B, K)
    log_joint_class = _log_joint_per_class(mixture, log_joint)  # (B, C)
    # log p_t(y | x) = log p_t(x, y) - log p_t(x)                                   (Bayes' rule)
    return (log_joint_class - torch.logsumexp(log_joint, dim=1, keepdim=True)).to(x.dtype)


def score(mixture: GaussianMixture, x: torch.Tensor, alpha_bar, y: torch.Tensor | None = None) -> torch.Tensor:
    """The exact score ∇_x log p_t(x), or ∇_x log p_t(x | y) when labels are given (eq. B), (B, D).

    :param mixture: the data's mixture p_0
    :param x: points $x_t$, (B, D)
    :param alpha_bar: $\\bar\\alpha_t$, a number or one value per point
    :param y: optional classes, LongTensor (B,)
    """
    mixture = _check_mixture(mixture)
    log_joint, component_scores = _components(mixture, x, alpha_bar)
    keep = None if y is None else _class_mask(mixture, y, x.shape[0])
    # ∇ log p_t(x) = Σ_k r_k(x) s_k(x); ∇ log p_t(x | y): the same over the components of y  (eq. B)
    return _mixture_score(log_joint, component_scores, keep).to(x.dtype)


def classifier_score(mixture: GaussianMixture, x: torch.Tensor, alpha_bar, y: torch.Tensor) -> torch.Tensor:
    """The gradient of the exact classifier, ∇_x log p_t(y | x), (B, D).

    p_t(y | x) = Σ_{k ∈ y} r_k(x), and ∇ r_k = r_k (s_k - Σ_j r_j s_j), so the gradient of its
    log is the class's responsibility-weighted score minus the mixture's.

    :param mixture: the data's mixture p_0
    :param x: points $x_t$, (B, D)
    :param alpha_bar: $\\bar\\alpha_t$, a number or one value per point
    :param y: classes, LongTensor (B,)
    """
    mixture = _check_mixture(mixture)
    log_joint, component_scores = _components(mixture, x, alpha_bar)
    mask = _class_mask(mixture, y, x.shape[0])
    # ∇ log p_t(y | x) = Σ_{k ∈ y} r_k^y(x) s_k(x) - Σ_k r_k(x) s_k(x)
    gradient = _mixture_score(log_joint, component_scores, mask) - _mixture_score(log_joint, component_scores)
    return gradient.to(x.dtype)


def posterior_mean(mixture: GaussianMixture, x: torch.Tensor, alpha_bar) -> torch.Tensor:
    """E[x_0 | x_t = x] by conditioning each Gaussian component, (B, D) in x's dtype.

    Within component k, (x_0, x_t) is jointly Gaussian with Cov(x_0, x_t) = √ᾱ_t Σ_k, so
    E[x_0 | x_t, k] = μ_k + √ᾱ_t Σ_k C_k⁻¹ (x_t - m_k); the component itself has posterior r_k(x_t).
    This does not use the score: it is the independent check of Tweedie's formula.

    :param mixture: the data's mixture p_0
    :param x: points $x_t$, (B, D)
    :param alpha_bar: $\\bar\\alpha_t$, a number or one value per point
    """
    mixture = _check_mixture(mixture)
    log_joint, component_scores = _components(mixture, x, alpha_bar)
    a = _alpha_bar_column(alpha_bar, x.shape[0], x.device)[:, :, None]  # (N, 1, 1)
    responsibilities = torch.softmax(log_joint, dim=1)  # (B, K)
    # C_k⁻¹ (x_t - m_k) = -s_k(x_t), so E[x_0 | x_t, k] = μ_k - √ᾱ_t Σ_k s_k(x_t)
    means, covariances = mixture.means.to(x.device), mixture.covariances.to(x.device)
    within = means[None] - a.sqrt() * torch.einsum("kij,bkj->bki", covariances, component_scores)  # (B, K, D)
    # E[x_0 | x_t] = Σ_k r_k(x_t) E[x_0 | x_t, k]
    return torch.einsum("bk,bki->bi", responsibilities, within).to(x.dtype)


def tilted_log_density(mixture: GaussianMixture, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """log p_0(x) + λ log p_0(y | x): the log of the tilted density p_λ(x | y), up to a constant.

    p_λ(x | y) ∝ p_0(x) p_0(y | x)^λ ∝ p_0(x | y)^λ p_0(x)^{1-λ} (lesson 03, eq. E: the notes' eq. 5 and
    8 at t = 0). At
    λ = 0 it is p_0(x), at λ = 1 p_0(x | y); normalise it numerically (on a grid) for other λ.

    :param mixture: the data's mixture p_0
    :param x: clean points $x_0$, (B, D)
    :param y: classes, LongTensor (B,)
    :param scale: the guidance weight λ >= 0
    :return: (B,) in x's dtype
    """
    mixture = _check_mixture(mixture)
    scale = check_number(scale, "scale", minimum=0.0, hint="Guidance weights are >= 0.")
    y = check_labels(y, mixture.num_classes, x.shape[0], name="y").to(x.device)
    log_posterior = class_log_posterior(mixture, x.double(), 1.0).gather(1, y[:, None]).squeeze(1)
    # log p_λ(x | y) = log p_0(x) + λ log p_0(y | x) + const
    return (log_prob(mixture, x.double(), 1.0) + scale * log_posterior).to(x.dtype)


# ---------------------------------------------------------------------------------------------- for samplers


def exact_eps_model(mixture: GaussianMixture, schedule: NoiseSchedule):
    """The exact noise prediction ε*(x_t, t [, y]) = -√(1 - ᾱ_t) ∇ log p_t(x_t [| y]) as a model.

    It has the call signature of the course's UNet, so :func:`course_lib.samplers.sample_loop` and
    :func:`course_lib.guidance.cfg_denoiser` take it as they take a network: ``class_labels`` equal
    to ``mixture.num_classes`` is the null label (no class), as in classifier-free guidance.

    :param mixture: the data's mixture p_0
    :param schedule: the noise schedule ($\\bar\\alpha_t$)
    :return: ``model(x_t, t, class_labels=None) -> eps`` with x_t (B, D), t an int, 0-d or (B,)
    """
    mixture = _check_mixture(mixture)
    null_label = mixture.num_classes

    def model(x: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        alpha_bar = alpha_bar_at(schedule, t, _points(x)).double()  # (B, 1) or (1, 1)
        log_joint, component_scores = _components(mixture, x, alpha_bar)
        if class_labels is not None:
            class_labels = check_labels(class_labels, null_label + 1, x.shape[0], name="class_labels").to(x.device)
            # a point with a class keeps that class's components, a point with the null label keeps all
            keep = mixture.component_classes.to(x.device)[None, :] == class_labels[:, None]  # (B, K)
            keep |= (class_labels == null_label)[:, None]
        else:
            keep = None
        # ∇ log p_t(x_t [| y]) = Σ_k r_k s_k, r over the kept components                      (eq. B)
        exact_score = _mixture_score(log_joint, component_scores, keep)
        # ε*(x_t) = -√(1 - ᾱ_t) ∇ log p_t(x_t)                                          (eq. D)
        return eps_from_score(exact_score.to(x.dtype), t, schedule)

    return model


def exact_classifier(mixture: GaussianMixture, schedule: NoiseSchedule):
    """The exact noisy classifier p_t(y | x_t) as logits, for :mod:`course_lib.guidance`.

    The logits are log p_t(x_t, y); their log-softmax is log p_t(y | x_t). They are plain torch
    operations of x_t, so autograd gives ∇ log p_t(y | x_t), as for lesson 04's trained classifier.

    :param mixture: the data's mixture p_0
    :param schedule: the noise schedule ($\\bar\\alpha_t$)
    :return: ``classifier(x_t, t) -> logits`` (B, C) with x_t (B, D), t an int, 0-d or (B,)
    """
    mixture = _check_mixture(mixture)

    def classifier(x: torch.Tensor, t) -> torch.Tensor:
        alpha_bar = alpha_bar_at(schedule, t, _points(x)).double()
        log_joint, _ = _components(mixture, x, alpha_bar)  # (B, K), differentiable in x
        return _log_joint_per_class(mixture, log_joint).to(x.dtype)  # log p_t(x, y)

    return classifier
