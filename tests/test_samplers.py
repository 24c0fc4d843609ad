"""Tests of course_lib.samplers: step-for-step equality with diffusers, and the formulas."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from course_lib.samplers import (
    SAMPLER_NAMES,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    EulerSampler,
    make_sampler,
    randn_tensor,
    sample_loop,
)
from course_lib.schedules import make_schedule

# Stable Diffusion v1.5's scheduler_config.json (a PNDMScheduler config), as the pipelines load it
SD_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
)
SCHEDULES = {  # our kind -> (make_schedule args, diffusers overrides)
    "scaled_linear": ((0.00085, 0.012), {}),
    "linear": ((1e-4, 0.02), dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
    "cosine": ((1e-4, 0.02), dict(beta_schedule="squaredcos_cap_v2")),
}
DIFFUSERS_CLASS = {
    "ddpm": "DDPMScheduler", "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler", "dpmsolver": "DPMSolverMultistepScheduler",
}
SHAPE = (2, 3, 4, 4)


def fake_model(x, t):
    """A deterministic stand-in for the UNet: eps as a smooth function of x and t."""
    return 0.6 * torch.tanh(x) + 0.3 * torch.sin(float(t) / 70 + 2 * x)


def schedule_of(kind):
    return make_schedule(kind, 1000, *SCHEDULES[kind][0])


def pair(name, kind, steps_offset=1, timestep_spacing="leading", eta=0.0):
    """Our sampler and the diffusers scheduler of the same name and configuration
    (``timestep_spacing=None``: set by neither, each class's default)."""
    diffusers = pytest.importorskip("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    config = {**SD_CONFIG, **SCHEDULES[kind][1], "steps_offset": steps_offset}
    kwargs = dict(steps_offset=steps_offset)
    if timestep_spacing is not None:
        config["timestep_spacing"] = kwargs["timestep_spacing"] = timestep_spacing
    theirs = getattr(diffusers, DIFFUSERS_CLASS[name]).from_config(config)
    if name == "ddim":
        kwargs["eta"] = eta
    return make_sampler(name, schedule_of(kind), **kwargs), theirs


def assert_close(ours, theirs, what):
    scale = theirs.abs().max().clamp(min=1e-6)
    err = ((ours.double() - theirs.double()).abs().max() / scale).item()
    assert err <= 1e-4, f"{what}: relative difference {err:.2e}"


def compare_loops(ours, theirs, n, eta=None, seed=0):
    """Run both with the same fake model and seeds; compare every quantity at every step."""
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert torch.equal(ours.timesteps.double(), theirs.timesteps.double()), (ours.timesteps, theirs.timesteps)
    assert ours.init_noise_sigma == pytest.approx(float(theirs.init_noise_sigma), rel=1e-6)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    g_ours, g_theirs = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 1)
    x_ours, x_theirs = x_T * ours.init_noise_sigma, x_T * theirs.init_noise_sigma
    extra = {} if eta is None else {"eta": eta}
    for i, (t_ours, t_theirs) in enumerate(zip(ours.timesteps, theirs.timesteps)):
        in_ours, in_theirs = ours.scale_model_input(x_ours, t_ours), theirs.scale_model_input(x_theirs, t_theirs)
        assert_close(in_ours, in_theirs, f"scale_model_input at step {i}")
        x_ours = ours.step(fake_model(in_ours, t_ours), t_ours, x_ours, generator=g_ours)
        x_theirs = theirs.step(fake_model(in_theirs, t_theirs), t_theirs, x_theirs, generator=g_theirs, **extra).prev_sample
        assert isinstance(x_ours, torch.Tensor)
        assert_close(x_ours, x_theirs, f"sample after step {i} (t={int(t_ours)})")
    return x_ours


# (sampler, schedule kind, steps, steps_offset): SD's steps_offset=1 allows at most 999 "leading"
# steps, so the 1000-step runs use steps_offset=0; DPM-Solver's grid has n + 1 points, so at most 999
CASES = [(name, kind, n, 1) for name in SAMPLER_NAMES for kind in SCHEDULES for n in (1, 7, 25, 50)]
CASES += [pytest.param(name, "scaled_linear", 1000 if name != "dpmsolver" else 999, 0, marks=pytest.mark.slow)
          for name in SAMPLER_NAMES]
CASES += [(name, kind, 500, 1) for name in SAMPLER_NAMES for kind in ("linear", "cosine")]  # long runs, kept fast


@pytest.mark.parametrize("name, kind, n, steps_offset", CASES)
def test_matches_diffusers_step_for_step(name, kind, n, steps_offset):
    ours, theirs = pair(name, kind, steps_offset=steps_offset)
    compare_loops(ours, theirs, n, eta=0.0 if name == "ddim" else None)


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("n", [1, 7, 50])
def test_ddim_with_noise_matches_diffusers(kind, n):
    ours, theirs = pair("ddim", kind, eta=1.0)
    compare_loops(ours, theirs, n, eta=1.0)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("n", [7, 50])
def test_other_timestep_spacings_match_diffusers(name, spacing, n):
    # plain from_config of SD v1.5's config gives Euler and DPM-Solver "linspace" in diffusers
    ours, theirs = pair(name, "scaled_linear", timestep_spacing=spacing)
    compare_loops(ours, theirs, n, eta=0.0 if name == "ddim" else None)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("n", [1, 10, 50])
def test_defaults_are_diffusers_from_config_of_sd15(name, n):
    """XSampler(schedule) is XScheduler.from_config(SD v1.5's scheduler config), which sets no
    timestep_spacing: the same grid, the same init_noise_sigma, the same samples step for step."""
    diffusers = pytest.importorskip("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    classes = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "euler": EulerSampler, "dpmsolver": DPMSolverSampler}
    ours = classes[name](schedule_of("scaled_linear"))
    theirs = getattr(diffusers, DIFFUSERS_CLASS[name]).from_config(SD_CONFIG)
    assert ours.timestep_spacing == theirs.config.timestep_spacing == type(ours).default_timestep_spacing
    compare_loops(ours, theirs, n, eta=0.0 if name == "ddim" else None)


def test_sd_defaults():
    s = schedule_of("scaled_linear")
    spacing = {"ddpm": "leading", "ddim": "leading", "euler": "linspace", "dpmsolver": "linspace"}
    for name in SAMPLER_NAMES:
        sampler = make_sampler(name, s)
        assert (sampler.timestep_spacing, sampler.steps_offset) == (spacing[name], 1)
    ddim = DDIMSampler(s)
    assert ddim.eta == 0.0 and not ddim.set_alpha_to_one
    assert DDPMSampler(s).variance_type == "fixed_small"
    ddim.set_timesteps(50)
    assert ddim.timesteps.dtype == torch.int64
    assert ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1  # SD's DDIM grid


def test_ddim_eta_zero_is_deterministic_and_eta_one_is_not():
    s = schedule_of("scaled_linear")
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def run(eta, seed):
        sampler = DDIMSampler(s, eta=eta)
        sampler.set_timesteps(10)
        return sample_loop(fake_model, sampler, x_T, generator=torch.Generator().manual_seed(seed), progress=False)

    assert torch.equal(run(0.0, 1), run(0.0, 2))
    assert torch.equal(run(1.0, 1), run(1.0, 1))
    assert not torch.allclose(run(1.0, 1), run(1.0, 2))


def test_ddpm_step_is_algorithm_2():
    # with the full grid (n = T), a DDPM step is x_{t-1} = (x_t - β_t / sqrt(1-ᾱ_t) ε) / sqrt(α_t) + σ_t z,
    # σ_t² = β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t: the same as the posterior mean of eq. 7 the sampler uses
    s = schedule_of("linear")
    sampler = DDPMSampler(s, steps_offset=0)
    sampler.set_timesteps(1000)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (999, 500, 1):
        eps = fake_model(x, t)
        new = sampler.step(eps, torch.tensor(t), x, generator=torch.Generator().manual_seed(t))
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        a_bar, a_bar_prev = s.alphas_cumprod.double()[t], s.alphas_cumprod.double()[t - 1]
        beta, alpha = s.betas.double()[t], s.alphas.double()[t]
        sigma = ((1 - a_bar_prev) / (1 - a_bar) * beta).sqrt()
        expected = (x - beta / (1 - a_bar).sqrt() * eps) / alpha.sqrt() + sigma * z
        # (float32 coefficients: β_t = 1 - ᾱ_t/ᾱ_{t-1} loses digits at small t, as in diffusers)
        assert torch.allclose(new, expected, rtol=2e-4, atol=2e-5), t


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_ddpm_variance_is_the_variance_of_the_noise_its_step_adds(variance_type):
    # two steps from the same x_t with two generators differ by σ_t (z_1 - z_2); on a grid that skips
    # timesteps σ_t² is β̃ (fixed_small) or β with the one-step β = 1 - ᾱ_t / ᾱ_prev, 0 after t = 0
    s = schedule_of("linear")
    sampler = DDPMSampler(s, variance_type)
    sampler.set_timesteps(50)
    x, eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)), torch.zeros(SHAPE)
    grid = sampler.timesteps.tolist()
    for i, t in enumerate(grid):
        a_bar = s.alphas_cumprod.double()[t]
        a_bar_prev = s.alphas_cumprod.double()[grid[i + 1]] if i + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
        beta = 1 - a_bar / a_bar_prev
        expected = (1 - a_bar_prev) / (1 - a_bar) * beta if variance_type == "fixed_small" else beta
        assert math.isclose(sampler.variance(t).item(), max(expected.item(), 1e-20 if variance_type == "fixed_small" else 0),
                            rel_tol=1e-4), t
        difference = (sampler.step(eps, t, x, generator=torch.Generator().manual_seed(1))
                      - sampler.step(eps, t, x, generator=torch.Generator().manual_seed(2)))
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) - torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(difference, sampler.variance(t).sqrt() * z, atol=1e-6), t
    full = DDPMSampler(s, steps_offset=0)
    full.set_timesteps(1000)
    assert full.variance(0).item() == 0.0


def test_ddim_is_euler_in_sigma_variables():
    # deterministic DDIM is Euler's method on dx/dσ = ε for x = x_t / sqrt(ᾱ_t): the two samplers
    # follow the same x_t (Euler's x divided by sqrt(σ² + 1)) on every step but the last
    s = schedule_of("scaled_linear")
    ddim, euler = DDIMSampler(s), EulerSampler(s, timestep_spacing="leading")  # on DDIM's grid
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    trajectories = {}
    for sampler in (ddim, euler):
        sampler.set_timesteps(20)
        steps = trajectories[sampler.name] = []
        sample_loop(fake_model, sampler, x_T, progress=False, callback=lambda i, t, x: steps.append(x))
    for i in range(19):
        x_t_euler = trajectories["euler"][i] / (euler.sigmas[i + 1] ** 2 + 1) ** 0.5
        assert_close(x_t_euler, trajectories["ddim"][i], f"step {i}")


def test_dpmsolver_first_step_is_ddim_and_second_step_is_2m():
    s = schedule_of("scaled_linear")
    sampler = DPMSolverSampler(s)
    sampler.set_timesteps(10)
    ts = [int(t) for t in sampler.timesteps[:3]]
    a = s.alphas_cumprod.double()
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    lam = torch.log(alpha / sigma)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # first step, first order = DDIM (η = 0): x_t = sqrt(ᾱ_t) x̂_0 + sqrt(1 - ᾱ_t) ε
    eps0 = fake_model(x, ts[0])
    x0_0 = (x - sigma[ts[0]] * eps0) / alpha[ts[0]]
    x1 = sampler.step(eps0, ts[0], x)
    assert torch.allclose(x1, alpha[ts[1]] * x0_0 + sigma[ts[1]] * eps0, rtol=1e-5, atol=1e-6)
    # second step, DPM-Solver++(2M) as in the paper (Algorithm 2): r = h_{i-1} / h_i,
    # D = (1 + 1/(2r)) x̂_0(t_i) - 1/(2r) x̂_0(t_{i-1}), x = (σ_t/σ_s) x - α_t (e^{-h} - 1) D
    eps1 = fake_model(x1, ts[1])
    x0_1 = (x1 - sigma[ts[1]] * eps1) / alpha[ts[1]]
    h, h_prev = lam[ts[2]] - lam[ts[1]], lam[ts[1]] - lam[ts[0]]
    r = h_prev / h
    D = (1 + 1 / (2 * r)) * x0_1 - 1 / (2 * r) * x0_0
    expected = sigma[ts[2]] / sigma[ts[1]] * x1 - alpha[ts[2]] * (torch.exp(-h) - 1) * D
    assert torch.allclose(sampler.step(eps1, ts[1], x1), expected, rtol=1e-5, atol=1e-6)


def test_dpmsolver_last_step_returns_pred_x0():
    s = schedule_of("scaled_linear")
    sampler = DPMSolverSampler(s)
    sampler.set_timesteps(3)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = int(sampler.timesteps[-1])
    a = s.alphas_cumprod.double()[t]
    eps = fake_model(x, t)
    assert torch.allclose(sampler.step(eps, t, x), (x - (1 - a).sqrt() * eps) / a.sqrt())


def test_euler_alpha_bar_and_scaling():
    s = schedule_of("scaled_linear")
    euler = EulerSampler(s, timestep_spacing="leading")  # integer timesteps: ᾱ_t read off the schedule
    euler.set_timesteps(10)
    x = torch.ones(1, 1, 2, 2)
    for t in euler.timesteps:
        a = s.alphas_cumprod[int(t)]
        assert euler.alpha_bar(t).item() == pytest.approx(a.item(), rel=1e-5)
        assert euler.scale_model_input(x, t).flatten()[0].item() == pytest.approx(a.sqrt().item(), rel=1e-5)
    assert euler.init_noise_sigma == pytest.approx(math.sqrt(1 / s.alphas_cumprod[int(euler.timesteps[0])].item()), rel=1e-5)
    # "linspace" (the default): fractional t, σ interpolated linearly between the schedule's σ_t, ᾱ = 1 / (1 + σ²)
    euler = EulerSampler(s)
    euler.set_timesteps(5)
    t = euler.timesteps[1]  # 749.25
    low, frac = int(t), float(t) - int(t)
    sigma = (1 - frac) * s.sigmas[low].item() + frac * s.sigmas[low + 1].item()
    assert 0 < frac < 1 and euler.alpha_bar(t).item() == pytest.approx(1 / (1 + sigma ** 2), rel=1e-5)
    assert euler.init_noise_sigma == pytest.approx(s.sigmas[999].item(), rel=1e-6)  # σ_max, diffusers' choice


def test_sample_loop_equals_the_loop_written_out_and_calls_back():
    s = schedule_of("scaled_linear")
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    for name in SAMPLER_NAMES:
        sampler = make_sampler(name, s)
        sampler.set_timesteps(5)
        calls = []
        out = sample_loop(fake_model, sampler, x_T, generator=torch.Generator().manual_seed(0), progress=False,
                          callback=lambda i, t, x: calls.append((i, int(t))))
        assert calls == [(i, int(t)) for i, t in enumerate(sampler.timesteps)]
        sampler.set_timesteps(5)
        g, x = torch.Generator().manual_seed(0), x_T * sampler.init_noise_sigma
        for t in sampler.timesteps:
            x = sampler.step(fake_model(sampler.scale_model_input(x, t), t), t, x, generator=g)
        assert torch.equal(out, x), name


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_dtype_is_kept(name):
    sampler = make_sampler(name, schedule_of("scaled_linear"), **({"eta": 1.0} if name == "ddim" else {}))
    sampler.set_timesteps(4)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = sample_loop(fake_model, sampler, x_T, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_randn_tensor_is_torch_randn_with_the_generator():
    a = randn_tensor((2, 3), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(9)))
    assert randn_tensor((2,), dtype=torch.float64).dtype == torch.float64


def test_make_sampler():
    s = schedule_of("scaled_linear")
    classes = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "euler": EulerSampler, "dpmsolver": DPMSolverSampler}
    for name, cls in classes.items():
        assert type(make_sampler(name, s)) is cls
    assert make_sampler("ddim", s, eta=0.5).eta == 0.5
    with pytest.raises(ValueError, match=r"Unknown sampler 'pndm'. Expected one of: 'ddpm', 'ddim', 'euler', 'dpmsolver'"):
        make_sampler("pndm", s)


def test_set_timesteps_errors():
    s = schedule_of("scaled_linear")
    sampler = DDIMSampler(s)
    with pytest.raises(ValueError, match="num_inference_steps must be between 1 and 1000, got 0"):
        sampler.set_timesteps(0)
    with pytest.raises(ValueError, match=r"between 1 and 1000, got 1001.*trained on 1000 timesteps"):
        sampler.set_timesteps(1001)
    with pytest.raises(ValueError, match=r"set_timesteps\(1000\).*steps_offset=1 gives timesteps from 1 to 1000, outside 0..999"):
        sampler.set_timesteps(1000)
    with pytest.raises(ValueError, match="repeated timesteps"):
        DPMSolverSampler(s, steps_offset=0).set_timesteps(1000)
    with pytest.raises(TypeError, match="num_inference_steps must be an integer"):
        sampler.set_timesteps(7.0)


def test_use_before_set_timesteps_and_unknown_timestep():
    s = schedule_of("scaled_linear")
    x = torch.zeros(SHAPE)
    for name in SAMPLER_NAMES:
        sampler = make_sampler(name, s)
        with pytest.raises(ValueError, match=r"Call sampler.set_timesteps\(num_inference_steps\) first"):
            sample_loop(fake_model, sampler, x, progress=False)
        sampler.set_timesteps(10)
        with pytest.raises(ValueError, match="t=123 is not one of this sampler's timesteps"):
            sampler.step(x, 123, x)
        with pytest.raises(ValueError, match=r"model_output has shape \(2, 3, 4\)"):
            sampler.step(x[..., 0], sampler.timesteps[0], x)


def test_constructor_errors():
    s = schedule_of("scaled_linear")
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        DDIMSampler("scaled_linear")
    with pytest.raises(ValueError, match="eta must be at least 0.0"):
        DDIMSampler(s, eta=-0.5)
    with pytest.raises(ValueError, match="Unknown variance_type 'learned'"):
        DDPMSampler(s, variance_type="learned")
    with pytest.raises(ValueError, match="Unknown timestep_spacing 'uniform'"):
        EulerSampler(s, timestep_spacing="uniform")
    with pytest.raises(ValueError, match="steps_offset must be at least 0"):
        DPMSolverSampler(s, steps_offset=-1)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler", "dpmsolver"])
def test_add_noise_is_the_forward_process_in_each_samplers_variable(name):
    from course_lib.diffusion import q_sample

    schedule = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    sampler = make_sampler(name, schedule, timestep_spacing="leading")  # integer timesteps, for q_sample
    sampler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((2, 3, 4, 4, 4), generator=generator)
    t = sampler.timesteps[3]
    noisy = sampler.add_noise(x0, eps, t)
    x_t = q_sample(x0, torch.full((x0.shape[0],), int(t)), eps, schedule)  # sqrt(ab) x0 + sqrt(1 - ab) eps
    # the denoiser sees scale_model_input(noisy): x_t in every sampler (Euler steps in x_t / sqrt(ab))
    assert torch.allclose(sampler.scale_model_input(noisy, t), x_t, atol=1e-5)
    with pytest.raises(ValueError, match="not one of this sampler's timesteps"):
        sampler.add_noise(x0, eps, 7)
