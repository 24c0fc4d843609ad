"""course_lib.mixture: the exact densities and scores of a labelled Gaussian mixture under the forward process.

Every closed form is compared with something computed another way: torch.distributions' mixture
log-density, autograd, finite differences, Monte Carlo over the forward process, importance
sampling of the posterior, and the course's own samplers and guidance functions.
"""

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from course_lib import mixture as M
from course_lib.diffusion import eps_from_score, pred_x0_from_eps, q_sample
from course_lib.guidance import cfg_denoiser, classifier_guided_denoiser, classifier_log_prob_grad
from course_lib.losses import eps_loss
from course_lib.sample_stats import energy_distance_test, weighted_moments
from course_lib.samplers import DDIMSampler, DDPMSampler, sample_loop
from course_lib.schedules import make_schedule

MIX = M.three_spokes()
SCHEDULE = make_schedule("linear", 1000, 1e-4, 0.02)


def _points(seed: int, n: int = 64) -> torch.Tensor:
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(mixture, alpha_bar: float, y: int | None = None):
    """p_t built by torch.distributions from the noised components (an independent log-density)."""
    means, covariances = M.noised_components(mixture, alpha_bar)
    weights = mixture.weights.clone()
    if y is not None:
        weights = torch.where(mixture.component_classes == y, weights, torch.zeros_like(weights))
    keep = weights > 0
    return MixtureSameFamily(Categorical(probs=weights[keep] / weights[keep].sum()),
                             MultivariateNormal(means[0][keep], covariance_matrix=covariances[0][keep]))


def _autograd(fn, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    return grad


# ---------------------------------------------------------------------------------------------- the mixture


def test_three_spokes_layout():
    assert (MIX.num_components, MIX.dim, MIX.num_classes) == (6, 2, 3)
    assert torch.allclose(MIX.class_weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    radii = MIX.means.norm(dim=1)
    assert torch.allclose(radii, torch.tensor([0.7, 2.0] * 3, dtype=torch.float64))


def test_sample_follows_components_and_classes():
    x0, labels = MIX.sample(40000, torch.Generator().manual_seed(0))
    assert x0.shape == (40000, 2) and labels.shape == (40000,)
    assert torch.allclose(torch.bincount(labels).double() / 40000, MIX.class_weights, atol=0.01)
    for y in range(3):
        members = MIX.component_classes == y
        # E[x | y] = Σ_{k ∈ y} π_k μ_k / π(y)
        expected = (MIX.weights[members, None] * MIX.means[members]).sum(0) / MIX.class_weights[y]
        assert torch.allclose(x0[labels == y].mean(0), expected, atol=0.03)
    wanted = torch.tensor([2, 0] * 500)
    x0, labels = MIX.sample(1000, torch.Generator().manual_seed(1), labels=wanted)
    assert torch.equal(labels, wanted)


def test_noised_components_match_the_forward_process():
    one = M.GaussianMixture(MIX.means[1:2], MIX.covariances[1:2], torch.ones(1, dtype=torch.float64),
                            torch.tensor([0]))
    x0, _ = one.sample(200000, torch.Generator().manual_seed(2))
    t = 300
    x_t = q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                   SCHEDULE)
    means, covariances = M.noised_components(one, SCHEDULE.alphas_cumprod[t].item())
    assert torch.allclose(x_t.mean(0), means[0, 0], atol=0.01)
    assert torch.allclose(torch.cov(x_t.T), covariances[0, 0], atol=0.01)
    noised = M.noised_mixture(one, SCHEDULE.alphas_cumprod[t])
    assert torch.equal(noised.means, means[0]) and torch.allclose(noised.covariances, covariances[0])
    # the two ends: the data itself, and pure noise
    means, covariances = M.noised_components(MIX, 1.0)
    assert torch.allclose(means[0], MIX.means) and torch.allclose(covariances[0], MIX.covariances)
    means, covariances = M.noised_components(MIX, 0.0)
    assert torch.all(means == 0) and torch.allclose(covariances[0], torch.eye(2, dtype=torch.float64).expand(6, 2, 2))


@pytest.mark.parametrize("alpha_bar", [1.0, 0.7, 0.05])
def test_log_prob_matches_torch_distributions(alpha_bar):
    x = _points(4)
    assert torch.allclose(M.log_prob(MIX, x, alpha_bar), _reference(MIX, alpha_bar).log_prob(x), atol=1e-10)
    for y in range(3):
        labels = torch.full((len(x),), y)
        assert torch.allclose(M.log_prob(MIX, x, alpha_bar, labels), _reference(MIX, alpha_bar, y).log_prob(x),
                              atol=1e-10)


def test_log_prob_integrates_to_one():
    edges = torch.linspace(-6, 6, 601, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], 1)
    area = (edges[1] - edges[0]) ** 2
    for alpha_bar in (1.0, 0.3):
        assert abs(float(M.log_prob(MIX, points, alpha_bar).exp().sum() * area) - 1) < 1e-4


def test_class_posterior_is_bayes_rule():
    x = _points(5)
    posterior = M.class_log_posterior(MIX, x, 0.4)
    assert torch.allclose(posterior.exp().sum(1), torch.ones(len(x), dtype=torch.float64))
    for y in range(3):
        labels = torch.full((len(x),), y)
        # log p(y | x) = log p(x | y) + log p(y) - log p(x)
        bayes = M.log_prob(MIX, x, 0.4, labels) + MIX.class_weights[y].log() - M.log_prob(MIX, x, 0.4)
        assert torch.allclose(posterior[:, y], bayes, atol=1e-12)


# ---------------------------------------------------------------------------------------------- scores


@pytest.mark.parametrize("alpha_bar", [1.0, 0.5, 0.01])
def test_scores_match_autograd(alpha_bar):
    x = _points(6)
    labels = torch.tensor([0, 1, 2] * 21 + [0])
    assert torch.allclose(M.score(MIX, x, alpha_bar), _autograd(lambda z: M.log_prob(MIX, z, alpha_bar), x),
                          atol=1e-12)
    assert torch.allclose(M.score(MIX, x, alpha_bar, labels),
                          _autograd(lambda z: M.log_prob(MIX, z, alpha_bar, labels), x), atol=1e-12)
    log_posterior = lambda z: M.class_log_posterior(MIX, z, alpha_bar).gather(1, labels[:, None])  # noqa: E731
    assert torch.allclose(M.classifier_score(MIX, x, alpha_bar, labels), _autograd(log_posterior, x), atol=1e-12)


def test_score_matches_finite_differences_with_one_alpha_bar_per_point():
    x = _points(7, n=32)
    alpha_bar = torch.linspace(0.02, 1.0, 32, dtype=torch.float64)
    step = 1e-5
    for i, unit in enumerate(torch.eye(2, dtype=torch.float64)):
        # ∂/∂x_i log p ≈ (log p(x + h e_i) - log p(x - h e_i)) / 2h
        central = (M.log_prob(MIX, x + step * unit, alpha_bar) - M.log_prob(MIX, x - step * unit, alpha_bar)) / (2 * step)
        assert torch.allclose(M.score(MIX, x, alpha_bar)[:, i], central, atol=1e-6)


def test_bayes_rule_for_scores_notes_eq_3_4():
    x = _points(8)
    labels = torch.tensor([2, 0, 1, 1] * 16)
    for alpha_bar in (0.9, 0.2):
        # ∇ log p_t(x | y) = ∇ log p_t(x) + ∇ log p_t(y | x)                    (notes, eq. 3-4)
        assert torch.allclose(M.score(MIX, x, alpha_bar, labels),
                              M.score(MIX, x, alpha_bar) + M.classifier_score(MIX, x, alpha_bar, labels), atol=1e-12)


def test_float32_points_get_float32_results():
    x = _points(9).float()
    assert M.score(MIX, x, 0.5).dtype == torch.float32
    assert torch.allclose(M.score(MIX, x, 0.5).double(), M.score(MIX, x.double(), 0.5), atol=1e-5)


# ---------------------------------------------------------------------------------------------- Tweedie


@pytest.mark.parametrize("t", [50, 300, 700])
def test_posterior_mean_is_tweedie(t):
    x_t = _points(10)
    alpha_bar = SCHEDULE.alphas_cumprod[t].double()
    exact_score = M.score(MIX, x_t, alpha_bar)
    # E[x_0 | x_t] = (x_t + (1 - ᾱ_t) ∇ log p_t(x_t)) / √ᾱ_t
    tweedie = (x_t + (1 - alpha_bar) * exact_score) / alpha_bar.sqrt()
    assert torch.allclose(M.posterior_mean(MIX, x_t, alpha_bar), tweedie, atol=1e-9)
    # the course's conversions say the same: x̂_0 from ε* = -√(1 - ᾱ_t) ∇ log p_t
    via_eps = pred_x0_from_eps(x_t, eps_from_score(exact_score, t, SCHEDULE), t, SCHEDULE)
    assert torch.allclose(via_eps, tweedie, atol=1e-5)


def test_posterior_mean_matches_importance_sampling():
    x0, _ = MIX.sample(200000, torch.Generator().manual_seed(11))
    t = 400
    alpha_bar = SCHEDULE.alphas_cumprod[t].double()
    for x_t in torch.tensor([[0.3, -0.4], [-1.0, 1.2]], dtype=torch.float64):
        # w_i ∝ q(x_t | x_0^i) = N(x_t; √ᾱ x_0^i, (1 - ᾱ) I)
        log_weights = -((x_t - alpha_bar.sqrt() * x0) ** 2).sum(1) / (2 * (1 - alpha_bar))
        estimate = weighted_moments(x0, log_weights)
        exact = M.posterior_mean(MIX, x_t[None], alpha_bar)[0]
        assert estimate.effective_sample_size > 1000
        assert ((estimate.mean - exact).abs() < 5 * estimate.standard_error).all()


# ---------------------------------------------------------------------------------------------- for samplers


def test_exact_eps_model_labels_and_null_label():
    model = M.exact_eps_model(MIX, SCHEDULE)
    x = _points(12, n=6)
    t = torch.tensor(250)
    alpha_bar = SCHEDULE.alphas_cumprod[250].double()
    unconditional = eps_from_score(M.score(MIX, x, alpha_bar), t, SCHEDULE)
    assert torch.allclose(model(x, t), unconditional, atol=1e-12)
    labels = torch.tensor([0, 1, 2, 3, 3, 1])  # 3 = the null label: no class
    out = model(x, t, class_labels=labels)
    conditional = eps_from_score(M.score(MIX, x, alpha_bar, labels.clamp(max=2)), t, SCHEDULE)
    assert torch.allclose(out[[0, 1, 2, 5]], conditional[[0, 1, 2, 5]], atol=1e-12)
    assert torch.allclose(out[[3, 4]], unconditional[[3, 4]], atol=1e-12)


def test_exact_classifier_logits_give_the_class_posterior_and_its_gradient():
    classifier = M.exact_classifier(MIX, SCHEDULE)
    x = _points(13, n=10)
    t = torch.full((10,), 120)
    alpha_bar = SCHEDULE.alphas_cumprod[120].double()
    assert torch.allclose(torch.log_softmax(classifier(x, t), 1), M.class_log_posterior(MIX, x, alpha_bar), atol=1e-12)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert torch.allclose(classifier_log_prob_grad(classifier, x, t, labels),
                          M.classifier_score(MIX, x, alpha_bar, labels), atol=1e-5)


def test_exact_eps_minimises_the_eps_loss():
    """E‖ε_θ - ε‖² = E‖ε* - ε‖² + E‖ε_θ - ε*‖²: ε* = E[ε | x_t] is the minimiser (Monte Carlo)."""
    generator = torch.Generator().manual_seed(14)
    x0, _ = MIX.sample(100000, generator)
    t = torch.randint(0, 1000, (100000,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_t = q_sample(x0, t, noise, SCHEDULE)
    best = M.exact_eps_model(MIX, SCHEDULE)(x_t, t)
    other = best + 0.1 * torch.sin(3 * x_t)  # any other function of x_t
    gap = float(eps_loss(other, noise) - eps_loss(best, noise))
    assert gap > 0
    assert abs(gap - float(((other - best) ** 2).mean())) < 3e-4  # the cross term vanishes


@pytest.mark.slow
def test_exact_samplers_reproduce_the_data():
    model = M.exact_eps_model(MIX, SCHEDULE)
    x_T = torch.randn(800, 2, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    data, _ = MIX.sample(800, torch.Generator().manual_seed(16))
    for sampler, steps in ((DDPMSampler(SCHEDULE), 100), (DDIMSampler(SCHEDULE), 50)):
        sampler.set_timesteps(steps)
        samples = sample_loop(model, sampler, x_T, generator=torch.Generator().manual_seed(17), progress=False)
        _, p_value = energy_distance_test(samples, data, permutations=100, generator=torch.Generator().manual_seed(18))
        assert p_value > 0.01, sampler
    # and a wrong score does not: the samples of a mixture with shifted means are told apart
    shifted = M.GaussianMixture(MIX.means + 0.3, MIX.covariances, MIX.weights, MIX.component_classes)
    sampler = DDIMSampler(SCHEDULE)
    sampler.set_timesteps(50)
    samples = sample_loop(M.exact_eps_model(shifted, SCHEDULE), sampler, x_T, progress=False)
    assert energy_distance_test(samples, data, permutations=100, generator=torch.Generator().manual_seed(18))[1] < 0.01


def test_classifier_guidance_and_cfg_are_one_sampler_with_exact_scores():
    model, classifier = M.exact_eps_model(MIX, SCHEDULE), M.exact_classifier(MIX, SCHEDULE)
    labels = torch.tensor([0, 1, 2] * 20)
    scales = torch.tensor([0.0, 1.0, 3.0, 10.0] * 15, dtype=torch.float64)
    x_T = torch.randn(60, 2, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    sampler = DDIMSampler(SCHEDULE)
    sampler.set_timesteps(30)
    guided = sample_loop(classifier_guided_denoiser(model, classifier, labels, scales, sampler), sampler, x_T,
                         progress=False)
    free = sample_loop(cfg_denoiser(model, labels, scales, null_label=MIX.num_classes), sampler, x_T, progress=False)
    assert (guided - free).abs().max() < 1e-4


def test_tilted_density_at_zero_and_one():
    x = _points(20)
    labels = torch.tensor([1] * 64)
    assert torch.allclose(M.tilted_log_density(MIX, x, labels, 0.0), M.log_prob(MIX, x, 1.0), atol=1e-12)
    # λ = 1: p(x) p(y | x) = p(x | y) p(y), the class's own density up to the constant p(y)
    difference = M.tilted_log_density(MIX, x, labels, 1.0) - M.log_prob(MIX, x, 1.0, labels)
    assert torch.allclose(difference, MIX.class_weights[1].log().expand(64), atol=1e-12)
    # λ > 1 only lowers the density where the class is uncertain (p(y | x) < 1)
    assert (M.tilted_log_density(MIX, x, labels, 3.0) <= M.tilted_log_density(MIX, x, labels, 1.0) + 1e-12).all()


# ---------------------------------------------------------------------------------------------- errors


def test_errors_say_what_to_do():
    with pytest.raises(ValueError, match="sum to 1"):
        M.GaussianMixture(MIX.means, MIX.covariances, MIX.weights * 2, MIX.component_classes)
    with pytest.raises(ValueError, match="positive definite"):
        M.GaussianMixture(MIX.means, -MIX.covariances, MIX.weights, MIX.component_classes)
    with pytest.raises(ValueError, match="every class"):
        M.GaussianMixture(MIX.means, MIX.covariances, MIX.weights, torch.tensor([0, 0, 2, 2, 3, 3]))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        M.score(MIX, torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.score(MIX, torch.zeros(3, 2), 1.5)
    with pytest.raises(ValueError, match="one value per point"):
        M.score(MIX, torch.zeros(3, 2), torch.tensor([0.5, 0.4]))
    with pytest.raises(ValueError, match="dimension"):
        M.score(MIX, torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        M.score(MIX, torch.zeros(3, 2), 0.5, torch.tensor([0, 1, 3]))
    with pytest.raises(TypeError, match="GaussianMixture"):
        M.score("mixture", torch.zeros(3, 2), 0.5)
    assert math.isfinite(float(M.log_prob(MIX, torch.full((1, 2), 40.0), 1.0)))  # far away: no underflow to -inf


@pytest.mark.slow
def test_the_samplers_discretisation_bias_shrinks_with_more_steps():
    """Lesson 03's small print: with exact scores, DDIM with 100 steps under-disperses a class a little; 400 steps less."""
    model = M.exact_eps_model(MIX, SCHEDULE)
    labels = torch.zeros(3000, dtype=torch.long)
    x_T = torch.randn(3000, 2, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    members = MIX.component_classes == 0
    # tr Cov of class 0: the within-component traces plus the spread of the two means (equal weights)
    exact = float(MIX.covariances[members].diagonal(dim1=1, dim2=2).sum(1).mean()
                  + 0.25 * (MIX.means[members][0] - MIX.means[members][1]).pow(2).sum())
    traces = {}
    for steps in (100, 400):
        sampler = DDIMSampler(SCHEDULE)
        sampler.set_timesteps(steps)
        samples = sample_loop(lambda x, t: model(x, t, class_labels=labels), sampler, x_T, progress=False)
        traces[steps] = float(torch.cov(samples.T).trace())
    assert traces[100] < exact - 0.02
    assert abs(traces[400] - exact) < abs(traces[100] - exact)
