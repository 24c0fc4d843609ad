"""Tests of course_lib.schedules: equality with diffusers and the formulas of lesson 01."""

import dataclasses
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from course_lib.schedules import SCHEDULE_KINDS, NoiseSchedule, make_schedule

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
SETTINGS = [  # (num_train_timesteps, beta_start, beta_end)
    (1000, 1e-4, 0.02),       # DDPM
    (1000, 0.00085, 0.012),   # Stable Diffusion v1.x
    (50, 1e-3, 0.2),          # a short schedule as the course's tiny models use
]


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
@pytest.mark.parametrize("T, beta_start, beta_end", SETTINGS)
def test_equals_diffusers_bit_for_bit(kind, T, beta_start, beta_end):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule=DIFFUSERS_NAME[kind]
    )
    ours = make_schedule(kind, T, beta_start, beta_end)
    for name in ("betas", "alphas", "alphas_cumprod"):
        mine = getattr(ours, name)
        assert mine.dtype == torch.float32 and mine.shape == (T,)
        assert torch.equal(mine, getattr(theirs, name)), name


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_alpha_bar_is_cumulative_product_of_one_minus_beta(kind):
    s = make_schedule(kind, 1000, 0.00085, 0.012)
    betas = s.betas.double()
    assert torch.allclose(s.alphas.double(), 1 - betas, rtol=0, atol=1e-7)
    # ᾱ_t = ∏_{s<=t} (1 - β_s), computed independently in float64 as exp(Σ log(1 - β))
    expected = torch.exp(torch.cumsum(torch.log1p(-betas), 0))
    assert torch.allclose(s.alphas_cumprod.double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_alpha_bar_and_snr_decrease(kind):
    s = make_schedule(kind)
    assert 0 < s.alphas_cumprod[-1] < s.alphas_cumprod[0] < 1
    assert (s.alphas_cumprod.diff() < 0).all()
    assert (s.snr.diff() < 0).all()
    assert (s.betas > 0).all() and (s.betas <= 0.999).all()


@pytest.mark.parametrize("kind", SCHEDULE_KINDS)
def test_snr_and_sigma_formulas(kind):
    s = make_schedule(kind)
    a = s.alphas_cumprod.double()
    assert torch.allclose(s.snr.double(), a / (1 - a), rtol=1e-5)
    # σ_t = sqrt((1 - ᾱ_t)/ᾱ_t) = 1/sqrt(SNR_t)
    assert torch.allclose(s.sigmas.double(), s.snr.double().rsqrt(), rtol=1e-5)


def test_linear_and_scaled_linear_spacing():
    lin = make_schedule("linear", 1000, 1e-4, 0.02)
    assert math.isclose(lin.betas[0].item(), 1e-4, rel_tol=1e-6)
    assert math.isclose(lin.betas[-1].item(), 0.02, rel_tol=1e-6)
    assert torch.allclose(lin.betas.double().diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64), rtol=1e-3)
    sd = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    root = sd.betas.double().sqrt()  # sqrt(β_t) evenly spaced
    step = (0.012**0.5 - 0.00085**0.5) / 999
    assert torch.allclose(root.diff(), torch.full((999,), step, dtype=torch.float64), rtol=1e-3)
    assert math.isclose(sd.betas[0].item(), 0.00085, rel_tol=1e-5)
    assert math.isclose(sd.betas[-1].item(), 0.012, rel_tol=1e-5)


def test_cosine_follows_nichol_dhariwal():
    T = 1000
    s = make_schedule("cosine", T)

    def f(t):  # f(t) = cos(((t/T + s)/(1 + s)) π/2)², ᾱ_t = f(t)/f(0)   (improved DDPM, eq. 17)
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    # index t is step t + 1 of the paper (0-based timesteps, as diffusers)
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    body = slice(0, 990)  # the last betas are capped at 0.999
    assert torch.allclose(s.alphas_cumprod.double()[body], expected[body], rtol=2e-4)
    assert s.betas.max().item() == pytest.approx(0.999)


def test_config_round_trip_repr_and_frozen():
    s = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    again = make_schedule(**s.config)
    assert torch.equal(again.alphas_cumprod, s.alphas_cumprod)
    assert repr(s) == "NoiseSchedule(kind='scaled_linear', num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012)"
    assert isinstance(s, NoiseSchedule)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kind = "linear"


def test_unknown_kind():
    with pytest.raises(ValueError, match=r"Unknown schedule kind 'squaredcos_cap_v2'.*'cosine'"):
        make_schedule("squaredcos_cap_v2")


def test_num_train_timesteps_must_be_positive_int():
    with pytest.raises(ValueError, match="num_train_timesteps must be at least 1, got 0"):
        make_schedule("linear", 0)
    with pytest.raises(TypeError, match="num_train_timesteps must be an integer"):
        make_schedule("linear", 1000.0)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_beta_must_be_in_open_unit_interval(bad):
    with pytest.raises(ValueError, match="beta_start must lie strictly between 0 and 1"):
        make_schedule("linear", 1000, bad, 0.02 if bad < 1 else 0.99)
    with pytest.raises(ValueError, match="beta_end must lie strictly between 0 and 1"):
        make_schedule("linear", 1000, 1e-4, bad)


def test_beta_start_above_beta_end():
    with pytest.raises(ValueError, match=r"beta_start \(0.02\) is larger than beta_end \(0.0001\).*Swap"):
        make_schedule("linear", 1000, 0.02, 1e-4)


def test_beta_must_be_a_number():
    with pytest.raises(TypeError, match="beta_end must be a number"):
        make_schedule("linear", 1000, 1e-4, "0.02")
