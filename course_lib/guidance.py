"""Guidance: classifier guidance (lesson 04) and classifier-free guidance (lesson 05).

Both steer sampling toward a label y by adding to the score. From Bayes' rule (notes, eq. 3)

    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t),

and with a weight lambda on the classifier term (notes, eq. 5). Since the score is
-eps / sqrt(1 - alpha_bar_t) (see diffusion.score_from_eps), in terms of eps:

    classifier guidance:       eps_hat = eps(x_t) - sqrt(1 - alpha_bar_t) * lambda * grad log p(y | x_t)
    classifier-free guidance:  eps_hat = eps(x_t) + lambda * (eps(x_t, y) - eps(x_t))          (notes, eq. 8)

In classifier-free guidance the classifier term is replaced by the difference of the conditional
and unconditional predictions of one model (notes, eq. 7). ``scale`` = lambda is diffusers'
``guidance_scale``: 1 means no guidance (plain conditional sampling), and Ho & Salimans' weight is
w = scale - 1, so eps_hat = (1 + w) eps(x_t, y) - w eps(x_t).

The denoiser factories return a ``denoise(x_in, t) -> eps`` function for
:func:`course_lib.samplers.sample_loop`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .checks import check_finite, check_floating, check_labels, check_number, check_shape
from .samplers import Sampler

__all__ = [
    "cfg",
    "classifier_log_prob_grad",
    "classifier_guided_eps",
    "classifier_guided_mean",
    "cfg_denoiser",
    "classifier_guided_denoiser",
]


def _check_scale(scale, batch: int | None = None):
    """A guidance scale: a number >= 0, or a tensor of scales >= 0, one per item (B,)."""
    if isinstance(scale, torch.Tensor):
        check_floating(scale, "scale")
        check_finite(scale, "scale")
        if scale.ndim > 1 or (batch is not None and scale.ndim == 1 and scale.shape[0] != batch):
            raise ValueError(
                f"scale as a tensor must have one value per item, shape ({batch},), got {tuple(scale.shape)}."
            )
        if (scale < 0).any():
            raise ValueError(f"scale must be >= 0, got a tensor with minimum {scale.min().item()}. "
                             f"Use 0 for no conditioning, 1 for the conditional model alone.")
        return scale
    return check_number(scale, "scale", minimum=0.0, hint="Guidance scales are >= 0 (1 means no guidance).")


def _per_item(value, like: torch.Tensor) -> torch.Tensor | float:
    """A number, or a (B,) / 0-d tensor reshaped to broadcast against ``like`` of shape (B, ...)."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.to(device=like.device, dtype=like.dtype, non_blocking=True)  # no wait for the GPU
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim == 1 else value


def _timestep_batch(t, batch: int, device) -> torch.Tensor:
    """Timestep(s) as a (batch,) tensor on ``device``: a single t is repeated."""
    t = torch.as_tensor(t, device=device)
    return t.reshape(-1).expand(batch) if t.numel() == 1 else t


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale) -> torch.Tensor:
    """Classifier-free guidance: combine unconditional and conditional noise predictions.

    :param eps_uncond: $\\epsilon_\\theta(x_t, \\varnothing)$, (B, C, H, W)
    :param eps_cond: $\\epsilon_\\theta(x_t, y)$, same shape
    :param scale: guidance scale $\\lambda$ (diffusers' ``guidance_scale``, >= 0): a number, or a
        tensor (B,) with one scale per image (a guidance sweep in one batch)
    :return: $\\tilde\\epsilon = \\epsilon_\\theta(x_t, \\varnothing) + \\lambda (\\epsilon_\\theta(x_t, y) - \\epsilon_\\theta(x_t, \\varnothing))$
    """
    check_floating(eps_uncond, "eps_uncond")
    check_floating(eps_cond, "eps_cond")
    check_shape(eps_cond, "eps_cond", eps_uncond.shape, hint="Both predictions must have the same shape.")
    scale = _per_item(_check_scale(scale, eps_cond.shape[0]), eps_cond)
    # ε̃ = ε(x_t) + λ (ε(x_t, y) - ε(x_t))                                  (notes, eq. 8, in ε form)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def classifier_log_prob_grad(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    t,
    y: torch.Tensor,
) -> torch.Tensor:
    """The gradient of a noise-aware classifier, $\\nabla_{x_t} \\log p_\\phi(y \\mid x_t, t)$, by autograd.

    The classifier should be in eval mode (a BatchNorm in train mode would mix the batch).

    :param classifier: ``classifier(x_t, t) -> logits`` of shape (B, K)
    :param x_t: noisy images $x_t$, (B, C, H, W)
    :param t: timesteps, an int / 0-d tensor or (B,)
    :param y: class indices, LongTensor (B,)
    :return: $\\nabla_{x_t} \\log p_\\phi(y \\mid x_t, t)$, same shape as x_t
    """
    check_finite(x_t, "x_t")
    y = check_labels(y, None, x_t.shape[0], name="y")
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        logits = classifier(x, _timestep_batch(t, x.shape[0], x.device))
        check_shape(logits, "classifier output", (x.shape[0], None),
                    hint="The classifier must return logits of shape (B, num_classes).")
        num_classes = logits.shape[1]
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(f"y must hold class indices in 0..{num_classes - 1}, got values {y.tolist()}.")
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # log p(y | x_t) for every class, (B, K)
        selected = log_probs.gather(1, y.to(logits.device)[:, None])  # (B, 1)
        # images do not interact, so the gradient of the sum is each image's own gradient
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad


def classifier_guided_eps(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    t,
    y: torch.Tensor,
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scale,
    alpha_bar_t,
) -> torch.Tensor:
    """Classifier guidance in eps form (Dhariwal & Nichol 2021, Algorithm 2; works with any sampler).

    :param eps: unconditional prediction $\\epsilon_\\theta(x_t, t)$, (B, C, H, W)
    :param x_t: the noisy images the prediction was made on, same shape
    :param t: timesteps
    :param y: target classes, LongTensor (B,)
    :param classifier: ``classifier(x_t, t) -> logits`` (B, K)
    :param scale: guidance scale $\\lambda$ (>= 0; 0 = no guidance), a number or a (B,) tensor
    :param alpha_bar_t: $\\bar\\alpha_t$, a number or a 0-d / (B,) tensor (``sampler.alpha_bar(t)``)
    :return: $\\hat\\epsilon = \\epsilon - \\sqrt{1 - \\bar\\alpha_t}\\, \\lambda \\nabla_{x_t} \\log p_\\phi(y \\mid x_t)$
    """
    check_finite(eps, "eps")
    check_shape(eps, "eps", x_t.shape, hint="eps must have the shape of x_t.")
    scale = _per_item(_check_scale(scale, eps.shape[0]), eps)
    alpha_bar_t = _per_item(torch.as_tensor(alpha_bar_t, dtype=torch.float32), eps)
    grad = classifier_log_prob_grad(classifier, x_t, t, y).to(eps.dtype)
    # ε̂ = ε - sqrt(1 - ᾱ_t) λ ∇_{x_t} log p_φ(y | x_t)            (Dhariwal & Nichol 2021, Algorithm 2)
    return eps - (1 - alpha_bar_t).sqrt() * scale * grad


def classifier_guided_mean(mean: torch.Tensor, variance, grad: torch.Tensor, scale) -> torch.Tensor:
    """Classifier guidance for DDPM's ancestral step (Dhariwal & Nichol 2021, Algorithm 1).

    :param mean: $\\mu_\\theta(x_t, t)$, the mean of p(x_{t-1} | x_t), (B, C, H, W)
    :param variance: $\\Sigma_\\theta(x_t, t)$ (a number, or a tensor broadcastable to mean)
    :param grad: $\\nabla_{x_t} \\log p_\\phi(y \\mid x_t)$, same shape as mean
    :param scale: guidance scale $\\lambda$ (>= 0)
    :return: the shifted mean $\\mu + \\lambda \\Sigma \\nabla_{x_t} \\log p_\\phi(y \\mid x_t)$
    """
    check_finite(mean, "mean")
    check_finite(grad, "grad")
    check_shape(grad, "grad", mean.shape, hint="grad must have the shape of mean.")
    scale = _per_item(_check_scale(scale, mean.shape[0]), mean)
    # μ̂ = μ + λ Σ ∇_{x_t} log p_φ(y | x_t)                          (Dhariwal & Nichol 2021, Algorithm 1)
    return mean + scale * variance * grad


def cfg_denoiser(unet: Callable[..., torch.Tensor], labels: torch.Tensor, scale, null_label: int):
    """A classifier-free-guided denoiser for a class-conditional UNet (lesson 05).

    One forward pass over the batch of two, ``cat([x, x])`` with labels ``[null, y]``, then
    ``chunk(2)`` into the unconditional and conditional predictions and :func:`cfg` (the trick
    of ``StableDiffusionPipeline``). With ``scale == 1`` the unconditional half would cancel, so
    only the conditional pass is run.

    :param unet: ``unet(sample, timestep, encoder_hidden_states=None, class_labels=None) -> eps``
    :param labels: target classes $y$, LongTensor (B,)
    :param scale: guidance scale $\\lambda$ (>= 0), a number or a (B,) tensor
    :param null_label: the class index the model was trained with for "no label", $\\varnothing$
    :return: ``denoise(x_in, t) -> eps`` for :func:`course_lib.samplers.sample_loop`
    """
    labels = check_labels(labels, None)
    scale = _check_scale(scale, labels.shape[0])
    if isinstance(null_label, bool) or not isinstance(null_label, int):
        raise TypeError(f"null_label must be an int class index, got {null_label!r}.")

    def denoise(x: torch.Tensor, t) -> torch.Tensor:
        check_labels(labels, None, x.shape[0])
        y = labels.to(x.device)
        if not isinstance(scale, torch.Tensor) and scale == 1.0:
            return unet(x, _timestep_batch(t, x.shape[0], x.device), class_labels=y)
        x_in = torch.cat([x, x])                                                  # (2B, C, H, W)
        y_in = torch.cat([torch.full_like(y, null_label), y])                      # [∅ ... ∅, y_1 ... y_B]
        t_in = _timestep_batch(t, x.shape[0], x.device)
        eps_uncond, eps_cond = unet(x_in, torch.cat([t_in, t_in]), class_labels=y_in).chunk(2)
        return cfg(eps_uncond, eps_cond, scale)

    return denoise


def classifier_guided_denoiser(
    unet: Callable[..., torch.Tensor],
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    scale,
    sampler: Sampler,
):
    """A classifier-guided denoiser: an unconditional UNet steered by a noise-aware classifier (lesson 04).

    Works with every sampler: ``sample_loop`` hands the denoiser ``sampler.scale_model_input(x, t)``,
    which is x_t itself (for Euler it is x / sqrt(sigma^2 + 1), the x_t the networks were trained
    on), so the UNet and the classifier both see x_t and the gradient is taken with respect to it.

    :param unet: unconditional ``unet(sample, timestep) -> eps``
    :param classifier: ``classifier(x_t, t) -> logits`` (B, K), in eval mode
    :param labels: target classes $y$, LongTensor (B,)
    :param scale: guidance scale $\\lambda$ (>= 0; 0 = unguided), a number or a (B,) tensor
    :param sampler: the sampler in use; gives $\\bar\\alpha_t$ via ``sampler.alpha_bar(t)``
    :return: ``denoise(x_in, t) -> eps`` for :func:`course_lib.samplers.sample_loop`
    """
    labels = check_labels(labels, None)
    scale = _check_scale(scale, labels.shape[0])
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a course_lib Sampler, got {type(sampler).__name__}. Use make_sampler(...).")

    def denoise(x: torch.Tensor, t) -> torch.Tensor:
        check_labels(labels, None, x.shape[0])
        t_batch = _timestep_batch(t, x.shape[0], x.device)
        eps = unet(x, t_batch)
        return classifier_guided_eps(eps, x, t_batch, labels.to(x.device), classifier, scale, sampler.alpha_bar(t))

    return denoise
