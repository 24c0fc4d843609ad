"""Tests of course_lib.diffusion: q(x_t | x_0), q(x_t | x_{t-1}), the conversions and the loss."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from course_lib.diffusion import (
    alpha_bar_at,
    eps_from_pred_x0,
    eps_from_score,
    eps_from_v,
    pred_x0_from_eps,
    pred_x0_from_v,
    q_sample,
    q_step,
    score_from_eps,
    v_from_eps,
)
from course_lib.losses import diffusion_training_loss, eps_loss
from course_lib.schedules import SCHEDULE_KINDS, make_schedule

SD = make_schedule("scaled_linear", 1000, 0.00085, 0.012)


def _data(seed=0, shape=(4, 3, 5, 5), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    noise = torch.randn(shape, generator=g, dtype=dtype)
    return x0, noise


def test_alpha_bar_at_gathers_and_broadcasts():
    x = torch.zeros(3, 2, 4, 4)
    a = alpha_bar_at(SD, torch.tensor([0, 10, 999]), x)
    assert a.shape == (3, 1, 1, 1) and a.dtype == torch.float32
    assert torch.equal(a.flatten(), SD.alphas_cumprod[[0, 10, 999]])
    assert alpha_bar_at(SD, 5, x).shape == (1, 1, 1, 1)  # one timestep for the whole batch
    assert alpha_bar_at(SD, 5, x.double()).dtype == torch.float64


def test_q_sample_is_the_closed_form():
    x0, noise = _data()
    t = torch.tensor([0, 1, 500, 999])
    a = SD.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    expected = a.sqrt() * x0 + (1 - a).sqrt() * noise  # x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε
    assert torch.allclose(q_sample(x0, t, noise, SD), expected, rtol=1e-12)
    assert q_sample(x0.float(), t, noise.float(), SD).dtype == torch.float32


def test_q_sample_equals_diffusers_add_noise():
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    x0, noise = _data(dtype=torch.float32)
    t = torch.tensor([3, 250, 640, 999])
    assert torch.allclose(q_sample(x0, t, noise, SD), theirs.add_noise(x0, noise, t), rtol=1e-6, atol=1e-6)
    assert torch.allclose(
        v_from_eps(q_sample(x0, t, noise, SD), noise, t, SD), theirs.get_velocity(x0, noise, t), atol=1e-5
    )


def test_q_sample_statistics_match_the_closed_form():
    # many draws of x_t for fixed x_0: mean sqrt(ᾱ_t) x_0, variance 1 - ᾱ_t
    n = 20000
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([1.5, -0.7, 0.2, 1.0], dtype=torch.float64)
    t = torch.tensor([0, 100, 400, 900])
    x0s = x0.expand(n, 4).reshape(n, 4)
    noise = torch.randn(n, 4, generator=g, dtype=torch.float64)
    for j in range(4):
        xt = q_sample(x0s[:, j : j + 1], int(t[j]), noise[:, j : j + 1], SD)
        a = SD.alphas_cumprod[t[j]].double()
        std_err = ((1 - a) / n).sqrt()
        assert abs(xt.mean() - a.sqrt() * x0[j]) < 5 * std_err
        assert abs(xt.var() - (1 - a)) < 5 * (1 - a) * (2 / n) ** 0.5


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_iterating_q_step_matches_q_sample(kind):
    # lesson 01: t + 1 small steps q(x_t | x_{t-1}) give the distribution q(x_t | x_0)
    schedule = make_schedule(kind, 1000)
    n, g = 20000, torch.Generator().manual_seed(2)
    x0 = torch.full((n, 1), 1.2, dtype=torch.float64)
    x = x0
    for t in range(301):
        x = q_step(x, t, torch.randn(x.shape, generator=g, dtype=torch.float64), schedule)
        if t in (0, 60, 300):
            a = schedule.alphas_cumprod[t].double()
            closed = q_sample(x0, t, torch.randn(x.shape, generator=g, dtype=torch.float64), schedule)
            for sample in (x, closed):
                assert abs(sample.mean() - a.sqrt() * 1.2) < 5 * ((1 - a) / n).sqrt()
                assert abs(sample.var() - (1 - a)) < 5 * (1 - a) * (2 / n) ** 0.5


def test_q_step_formula():
    x, noise = _data()
    t = torch.tensor([0, 7, 300, 999])
    b = SD.betas.double()[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(q_step(x, t, noise, SD), (1 - b).sqrt() * x + b.sqrt() * noise, rtol=1e-12)


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_conversions_round_trip(kind):
    schedule = make_schedule(kind)
    x0, noise = _data(seed=3)
    t = torch.tensor([0, 250, 700, 999])
    x_t = q_sample(x0, t, noise, schedule)
    a = schedule.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    close = dict(rtol=1e-7, atol=1e-7)
    # x_0 <-> ε
    assert torch.allclose(pred_x0_from_eps(x_t, noise, t, schedule), x0, **close)
    assert torch.allclose(eps_from_pred_x0(x_t, x0, t, schedule), noise, **close)
    # ε <-> score
    score = score_from_eps(noise, t, schedule)
    assert torch.allclose(score, -noise / (1 - a).sqrt(), **close)
    assert torch.allclose(eps_from_score(score, t, schedule), noise, **close)
    # ε <-> v <-> x_0
    v = v_from_eps(x_t, noise, t, schedule)
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x0, **close)  # v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0
    assert torch.allclose(eps_from_v(x_t, v, t, schedule), noise, **close)
    assert torch.allclose(pred_x0_from_v(x_t, v, t, schedule), x0, **close)


def test_score_is_the_gradient_of_log_q():
    # score_from_eps(ε) = ∇_{x_t} log q(x_t | x_0), with q(x_t | x_0) = N(sqrt(ᾱ) x_0, (1 - ᾱ) I), by autograd
    x0, noise = _data(seed=4)
    t = torch.tensor([1, 200, 600, 998])
    x_t = q_sample(x0, t, noise, SD).requires_grad_(True)
    a = SD.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    log_q = torch.distributions.Normal(a.sqrt() * x0, (1 - a).sqrt()).log_prob(x_t).sum()
    (grad,) = torch.autograd.grad(log_q, x_t)
    assert torch.allclose(score_from_eps(noise, t, SD), grad, rtol=1e-6, atol=1e-8)


def test_dtype_is_kept():
    x0, noise = _data(dtype=torch.bfloat16)
    t = torch.tensor([5, 6, 7, 8])
    assert q_sample(x0, t, noise, SD).dtype == torch.bfloat16
    assert pred_x0_from_eps(x0, noise, t, SD).dtype == torch.bfloat16


def test_eps_loss_is_mse():
    a, b = _data(seed=5)
    assert torch.allclose(eps_loss(a, b), ((a - b) ** 2).mean())
    assert eps_loss(b, b).item() == 0.0


def test_training_loss_draws_from_the_generator():
    x0, _ = _data(seed=6, dtype=torch.float32)
    seen = {}

    def model(x_t, t, class_labels=None):
        seen["t"], seen["labels"] = t, class_labels
        return torch.tanh(x_t)

    labels = torch.arange(4)
    loss = diffusion_training_loss(model, x0, SD, generator=torch.Generator().manual_seed(7), class_labels=labels)
    assert seen["labels"] is labels
    # the same draws by hand: t first, then ε
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(loss, ((torch.tanh(q_sample(x0, t, noise, SD)) - noise) ** 2).mean())


def test_training_loss_of_an_oracle_is_zero():
    # a "model" that knows x_0 predicts the noise exactly: the loss vanishes
    x0, _ = _data(seed=8)
    loss = diffusion_training_loss(lambda x_t, t: eps_from_pred_x0(x_t, x0, t, SD), x0, SD,
                                   generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-20


def test_errors():
    x0, noise = _data()
    with pytest.raises(ValueError, match=r"t out of range: got values from 0 to 1000"):
        q_sample(x0, torch.tensor([0, 1, 2, 1000]), noise, SD)
    with pytest.raises(ValueError, match=r"t has shape \(3,\) but the batch has 4 items"):
        q_sample(x0, torch.tensor([0, 1, 2]), noise, SD)
    with pytest.raises(ValueError, match=r"noise has shape \(4, 3, 5\), expected \(4, 3, 5, 5\)"):
        q_sample(x0, 3, noise[..., 0], SD)
    with pytest.raises(ValueError, match="x0 contains 1 non-finite values"):
        bad = x0.clone()
        bad[0, 0, 0, 0] = float("nan")
        q_sample(bad, 3, noise, SD)
    with pytest.raises(ValueError, match="must be a floating-point tensor"):
        q_sample(x0.long(), 3, noise, SD)
    with pytest.raises(ValueError, match="eps_pred has shape"):
        eps_loss(noise[:2], noise)
    with pytest.raises(ValueError, match="eps contains 1 non-finite"):
        bad = noise.clone()
        bad[1, 0, 0, 0] = float("inf")
        pred_x0_from_eps(x0, bad, 3, SD)
