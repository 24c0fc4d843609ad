"""Tests of course_lib.guidance: the formulas of the notes (eq. 3-8) and the guided denoisers."""

import pytest
import torch
from torch import nn

from course_lib.diffusion import score_from_eps
from course_lib.guidance import (
    cfg,
    cfg_denoiser,
    classifier_guided_denoiser,
    classifier_guided_eps,
    classifier_guided_mean,
    classifier_log_prob_grad,
)
from course_lib.samplers import SAMPLER_NAMES, DDIMSampler, EulerSampler, make_sampler, sample_loop
from course_lib.schedules import make_schedule

SD = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
SHAPE = (3, 2, 4, 4)
NUM_CLASSES = 4  # class 4 = the null label


class TinyUNet(nn.Module):
    """Stand-in with the course UNet's signature: unet(sample, timestep, encoder_hidden_states, class_labels)."""

    def __init__(self, channels=2, num_classes=NUM_CLASSES + 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.class_embedding = nn.Embedding(num_classes, channels)

    def forward(self, sample, timestep, encoder_hidden_states=None, class_labels=None):
        t = torch.as_tensor(timestep, device=sample.device).to(sample.dtype).reshape(-1, 1, 1, 1)
        h = torch.tanh(self.conv(sample)) * torch.cos(t / 400)
        if class_labels is not None:
            h = h + self.class_embedding(class_labels)[:, :, None, None]
        return h


class TinyClassifier(nn.Module):
    """A noise-aware classifier p(y | x_t, t): classifier(x, t) -> logits (B, K)."""

    def __init__(self, channels=2, size=4, num_classes=NUM_CLASSES):
        super().__init__()
        self.linear = nn.Linear(channels * size * size + 1, num_classes)

    def forward(self, x, t):
        t = torch.as_tensor(t, device=x.device).to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return self.linear(torch.cat([torch.tanh(x.flatten(1)) * 2, t / 1000], dim=1))


def _eps(seed, shape=SHAPE, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- a toy with exact answers
# Data: two classes in 2-D, x_0 | y ~ N(mu_y, s^2 I). Then x_t | y ~ N(sqrt(a) mu_y, v I) with
# v = a s^2 + 1 - a, so p(x_t | y), p(x_t), p(y | x_t) and all the scores are known exactly.
MU = torch.tensor([[-2.0, 0.0], [2.0, 0.5]], dtype=torch.float64)
S2 = 0.3**2


def _toy_log_p_x_given_y(x, t):  # (B, 2) -> (B, K)
    a = SD.alphas_cumprod.double()[torch.as_tensor(t).long()].reshape(-1, 1)
    v = a * S2 + 1 - a
    diff = x[:, None, :] - a.sqrt()[:, :, None] * MU[None]  # (B, K, 2)
    return -(diff**2).sum(-1) / (2 * v) - torch.log(2 * torch.pi * v)


def toy_classifier(x, t):
    """Exact Bayes classifier: logits log p(y) + log p(x_t | y), uniform prior."""
    return _toy_log_p_x_given_y(x, t)


def toy_eps_cond(x, t, y):
    """ε of the class-conditional model: -sqrt(1 - a) ∇ log p(x_t | y) = sqrt(1 - a) (x - sqrt(a) mu_y) / v."""
    a = SD.alphas_cumprod.double()[torch.as_tensor(t).long()].reshape(-1, 1)
    v = a * S2 + 1 - a
    return (1 - a).sqrt() * (x - a.sqrt() * MU[y]) / v


def toy_eps_uncond(x, t):
    """ε of the unconditional model: posterior-weighted average of the conditional ε."""
    weights = torch.softmax(toy_classifier(x, t), dim=1)  # p(y | x_t)
    each = torch.stack([toy_eps_cond(x, t, torch.full((x.shape[0],), k)) for k in range(2)], dim=1)
    return (weights[:, :, None] * each).sum(1)


def _toy_points(seed, n=6):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# --------------------------------------------------------------------------- cfg
def test_cfg_formula_and_its_rewritings():
    eps_u, eps_c = _eps(0), _eps(1)
    assert torch.equal(cfg(eps_u, eps_c, 0.0), eps_u)
    assert torch.allclose(cfg(eps_u, eps_c, 1.0), eps_c, atol=1e-6)  # scale 1 = no guidance
    for scale in (0.5, 3.0, 7.5):
        guided = cfg(eps_u, eps_c, scale)
        assert torch.allclose(guided, eps_u + scale * (eps_c - eps_u))
        w = scale - 1  # Ho & Salimans: (1 + w) ε(x_t, y) - w ε(x_t)
        assert torch.allclose(guided, (1 + w) * eps_c - w * eps_u, atol=1e-5)


def test_cfg_is_eq_8_in_score_space():
    # notes eq. 8: ∇log p̃(x_t|y) = λ ∇log p(x_t|y) + (1 - λ) ∇log p(x_t)
    eps_u, eps_c = _eps(2, dtype=torch.float64), _eps(3, dtype=torch.float64)
    t = torch.tensor([10, 400, 990])
    for lam in (0.0, 1.0, 4.0):
        s_u, s_c = score_from_eps(eps_u, t, SD), score_from_eps(eps_c, t, SD)
        guided = score_from_eps(cfg(eps_u, eps_c, lam), t, SD)
        assert torch.allclose(guided, lam * s_c + (1 - lam) * s_u)
        assert torch.allclose(guided, s_u + lam * (s_c - s_u))


def test_cfg_with_one_scale_per_image():
    eps_u, eps_c = _eps(4), _eps(5)
    scales = torch.tensor([0.0, 2.0, 7.5])
    batched = cfg(eps_u, eps_c, scales)
    for i, s in enumerate(scales.tolist()):
        assert torch.allclose(batched[i], cfg(eps_u[i : i + 1], eps_c[i : i + 1], s)[0])


def test_cfg_errors():
    eps = _eps(0)
    with pytest.raises(ValueError, match="scale must be at least 0.0, got -1.0"):
        cfg(eps, eps, -1.0)
    with pytest.raises(ValueError, match="scale must be >= 0"):
        cfg(eps, eps, torch.tensor([1.0, -2.0, 3.0]))
    with pytest.raises(ValueError, match=r"one value per item, shape \(3,\), got \(2,\)"):
        cfg(eps, eps, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="eps_cond has shape"):
        cfg(eps, eps[:2], 3.0)


# --------------------------------------------------------------------------- classifier guidance
def test_classifier_gradient_matches_finite_differences():
    torch.manual_seed(0)
    classifier = TinyClassifier().double()
    x = _eps(6, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    t = torch.tensor([5, 500, 900])
    grad = classifier_log_prob_grad(classifier, x, t, y)
    assert grad.shape == x.shape and not x.requires_grad

    def log_p(x_):
        return torch.log_softmax(classifier(x_, t), dim=1)[torch.arange(3), y]

    h = 1e-6
    for idx in [(0, 0, 0, 0), (1, 1, 2, 3), (2, 0, 3, 1), (2, 1, 1, 1)]:
        bump = torch.zeros_like(x)
        bump[idx] = h
        numeric = (log_p(x + bump) - log_p(x - bump))[idx[0]] / (2 * h)
        assert grad[idx].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


def test_guided_eps_formula_and_zero_scale():
    torch.manual_seed(0)
    classifier = TinyClassifier()
    x, eps = _eps(7), _eps(8)
    y, t = torch.tensor([1, 2, 0]), torch.tensor(300)
    a = SD.alphas_cumprod[300]
    assert torch.equal(classifier_guided_eps(eps, x, t, y, classifier, 0.0, a), eps)
    grad = classifier_log_prob_grad(classifier, x, t, y)
    guided = classifier_guided_eps(eps, x, t, y, classifier, 2.5, a)
    assert torch.allclose(guided, eps - (1 - a).sqrt() * 2.5 * grad)
    # in score form (notes, eq. 5): ∇log p(x_t) + λ ∇log p(y | x_t)
    assert torch.allclose(score_from_eps(guided, 300, SD), score_from_eps(eps, 300, SD) + 2.5 * grad, atol=1e-5)


def test_bayes_rule_eq_3_on_the_toy():
    # with the exact classifier, λ = 1 turns the unconditional ε into the class-conditional one:
    # ∇log p(x_t | y) = ∇log p(x_t) + ∇log p(y | x_t)
    x = _toy_points(0)
    for t in (50, 400, 900):
        a = SD.alphas_cumprod[t]
        for k in range(2):
            y = torch.full((6,), k)
            guided = classifier_guided_eps(toy_eps_uncond(x, t), x, t, y, toy_classifier, 1.0, a)
            assert torch.allclose(guided, toy_eps_cond(x, t, y), atol=1e-6)


def test_cfg_equals_classifier_guidance_with_the_implicit_classifier():
    # notes eq. 7: ∇log p(y | x_t) = ∇log p(x_t | y) - ∇log p(x_t), so with exact models
    # classifier-free guidance at scale λ is classifier guidance at scale λ
    x, t, y = _toy_points(1), 600, torch.tensor([0, 1, 0, 1, 1, 0])
    eps_u, eps_c = toy_eps_uncond(x, t), toy_eps_cond(x, t, y)
    for lam in (0.0, 0.5, 3.0):
        by_classifier = classifier_guided_eps(eps_u, x, t, y, toy_classifier, lam, SD.alphas_cumprod[t])
        assert torch.allclose(cfg(eps_u, eps_c, lam), by_classifier, atol=1e-6)


def test_guidance_moves_samples_toward_the_class():
    x_T = torch.randn(400, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.ones(400, dtype=torch.long)
    unet = lambda x, t: toy_eps_uncond(x, t)  # noqa: E731
    fractions = {}
    for lam in (0.0, 1.0, 4.0):
        sampler = DDIMSampler(SD)
        sampler.set_timesteps(25)
        x0 = sample_loop(classifier_guided_denoiser(unet, toy_classifier, y, lam, sampler), sampler, x_T, progress=False)
        fractions[lam] = ((x0 - MU[1]).norm(dim=1) < (x0 - MU[0]).norm(dim=1)).double().mean().item()
    assert 0.35 < fractions[0.0] < 0.65  # unguided: both classes
    assert fractions[1.0] > 0.97 and fractions[4.0] > 0.99  # guided to class 1


def test_classifier_guided_mean():
    mean, grad = _eps(9), _eps(10)
    assert torch.equal(classifier_guided_mean(mean, 0.3, grad, 0.0), mean)
    assert torch.allclose(classifier_guided_mean(mean, 0.3, grad, 2.0), mean + 2.0 * 0.3 * grad)
    variance = torch.tensor([0.1, 0.2, 0.3]).reshape(3, 1, 1, 1)
    assert torch.allclose(classifier_guided_mean(mean, variance, grad, 1.5), mean + 1.5 * variance * grad)


def test_classifier_guidance_errors():
    torch.manual_seed(0)
    classifier = TinyClassifier()
    x = _eps(0)
    with pytest.raises(ValueError, match="y has 2 entries but the batch has 3 images"):
        classifier_log_prob_grad(classifier, x, 10, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="y must be an integer tensor|y has shape"):
        classifier_log_prob_grad(classifier, x, 10, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"class indices in 0..3, got values \[0, 1, 9\]"):
        classifier_log_prob_grad(classifier, x, 10, torch.tensor([0, 1, 9]))
    with pytest.raises(ValueError, match="scale must be at least 0.0"):
        classifier_guided_eps(x, x, 10, torch.tensor([0, 1, 2]), classifier, -1.0, 0.5)


# --------------------------------------------------------------------------- denoisers
def test_cfg_denoiser_batch_of_two_equals_two_passes():
    torch.manual_seed(0)
    unet = TinyUNet()
    x, labels, t = _eps(11), torch.tensor([0, 3, 1]), torch.tensor(321)
    null = NUM_CLASSES
    with torch.no_grad():
        eps_u = unet(x, t.expand(3), class_labels=torch.full((3,), null))
        eps_c = unet(x, t.expand(3), class_labels=labels)
        for scale in (0.0, 3.0, 7.5, torch.tensor([1.0, 2.0, 5.0])):
            together = cfg_denoiser(unet, labels, scale, null)(x, t)
            assert torch.allclose(together, cfg(eps_u, eps_c, scale), atol=1e-6)
        assert torch.equal(cfg_denoiser(unet, labels, 1.0, null)(x, t), eps_c)  # scale 1: eps_cond


def test_cfg_denoiser_sends_one_batch_of_two():
    calls = []

    def unet(sample, timestep, encoder_hidden_states=None, class_labels=None):
        calls.append((sample.shape[0], timestep.tolist(), class_labels.tolist()))
        return sample * (class_labels.reshape(-1, 1, 1, 1) + 1)

    cfg_denoiser(unet, torch.tensor([2, 0, 1]), 5.0, null_label=9)(_eps(12), torch.tensor(7))
    assert calls == [(6, [7] * 6, [9, 9, 9, 2, 0, 1])]


def test_cfg_denoiser_errors():
    unet = TinyUNet()
    with pytest.raises(ValueError, match="labels has 2 entries but the batch has 3 images"):
        cfg_denoiser(unet, torch.tensor([0, 1]), 3.0, NUM_CLASSES)(_eps(0), torch.tensor(5))
    with pytest.raises(ValueError, match="labels must be an integer tensor|labels has shape"):
        cfg_denoiser(unet, torch.tensor([[0, 1, 2]]), 3.0, NUM_CLASSES)
    with pytest.raises(ValueError, match="scale must be at least 0.0"):
        cfg_denoiser(unet, torch.tensor([0, 1, 2]), -2.0, NUM_CLASSES)
    with pytest.raises(TypeError, match="null_label must be an int"):
        cfg_denoiser(unet, torch.tensor([0, 1, 2]), 3.0, None)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_zero_scale_classifier_guidance_is_unguided_sampling(name):
    torch.manual_seed(0)
    unet, classifier = TinyUNet(), TinyClassifier()
    labels = torch.tensor([0, 1, 2])
    x_T = _eps(13)
    results = []
    for guided in (False, True):
        sampler = make_sampler(name, SD, **({"eta": 1.0} if name == "ddim" else {}))
        sampler.set_timesteps(8)
        denoise = classifier_guided_denoiser(unet, classifier, labels, 0.0, sampler) if guided else unet
        results.append(sample_loop(denoise, sampler, x_T, generator=torch.Generator().manual_seed(1), progress=False))
    assert torch.equal(results[0], results[1])


def test_classifier_sees_the_scaled_x_t_with_euler():
    # Euler steps in x = x_t / sqrt(ᾱ_t); the classifier must see x_t = x / sqrt(σ² + 1). Then guided
    # Euler and guided DDIM (the same ODE step, see test_samplers) follow the same x_t.
    torch.manual_seed(0)
    unet, classifier = TinyUNet(), TinyClassifier()
    labels = torch.tensor([0, 1, 2])
    x_T = _eps(14)
    seen, trajectories = {"ddim": [], "euler": []}, {}
    for sampler in (DDIMSampler(SD), EulerSampler(SD, timestep_spacing="leading")):  # Euler on DDIM's grid
        sampler.set_timesteps(10)

        def watched(x, t, name=sampler.name):
            seen[name].append(x.detach().clone())
            return classifier(x, t)

        steps = trajectories[sampler.name] = []
        denoise = classifier_guided_denoiser(unet, watched, labels, 20.0, sampler)
        sample_loop(denoise, sampler, x_T, progress=False, callback=lambda i, t, x: steps.append(x))
    euler = sampler
    for i in range(10):
        assert torch.allclose(seen["euler"][i], seen["ddim"][i], rtol=1e-4, atol=1e-5), i
    for i in range(9):
        x_t = trajectories["euler"][i] / (euler.sigmas[i + 1] ** 2 + 1) ** 0.5
        assert torch.allclose(x_t, trajectories["ddim"][i], rtol=1e-4, atol=1e-5), i
    plain = DDIMSampler(SD)
    plain.set_timesteps(10)
    unguided = sample_loop(unet, plain, x_T, progress=False)
    assert (unguided - trajectories["ddim"][-1]).abs().max() > 1e-2  # the guidance did act


def test_classifier_guided_denoiser_errors():
    unet, classifier = TinyUNet(), TinyClassifier()
    sampler = DDIMSampler(SD)
    sampler.set_timesteps(5)
    with pytest.raises(ValueError, match="labels has 3 entries but the batch has 2 images"):
        classifier_guided_denoiser(unet, classifier, torch.tensor([0, 1, 2]), 1.0, sampler)(_eps(0)[:2], sampler.timesteps[0])
    with pytest.raises(ValueError, match="scale must be at least 0.0"):
        classifier_guided_denoiser(unet, classifier, torch.tensor([0, 1, 2]), -1.0, sampler)
    with pytest.raises(TypeError, match="sampler must be a course_lib Sampler"):
        classifier_guided_denoiser(unet, classifier, torch.tensor([0, 1, 2]), 1.0, "ddim")
