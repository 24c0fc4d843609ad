"""The exercises of lesson 06, the latent autoencoder: the KL term, the reparameterisation trick, and a
prediction about a stronger KL weight."""

from __future__ import annotations

import copy
import functools
from typing import Callable

import torch

from ..datasets import shapes_tensors
from ..i18n import tr, translatable
from ..losses import vae_loss
from ..metrics import psnr
from ..nn.vae import DiagonalGaussianDistribution
from ..pretrained import load_course_model
from ..recipes import RECIPES
from .grading import Case, ask_predictions, correct, grade, hint_for_exception, not_yet, seeded

__all__ = ["check_kl_diagonal_gaussian", "check_reparameterise", "check_kl_weight_prediction",
           "kl_weight_experiment"]


# (shape of mu and log sigma^2, seed): a batch of 2 first, so that a per-batch number differs from a per-image one
_POSTERIOR_CASES = [((2, 4, 8, 8), 0), ((3, 4, 8, 8), 1), ((1, 2, 4, 6), 2)]


def _posterior_inputs(shape: tuple, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mu ~ 1.5 N(0, 1) and log sigma^2 in [-4, 1): an encoder's output, away from the [-30, 20] clamp."""
    mean = 1.5 * seeded(160 + seed, *shape)
    logvar = -4.0 + 5.0 * torch.rand(shape, generator=torch.Generator().manual_seed(170 + seed))
    return mean, logvar


def _shape_text(shape: tuple) -> str:
    return tr("for mean and logvar of shape {shape}", shape=shape)


def check_kl_diagonal_gaussian(fn: Callable) -> bool:
    """Check ``fn(mean, logvar) -> KL(N(mu, sigma^2) || N(0, I))`` per image (lesson 06).

    KL = 1/2 Σ_{c,h,w} (μ² + σ² - 1 - log σ²), summed over the latent's C, H, W, one number per
    image: what ``DiagonalGaussianDistribution.kl()`` returns and the VAE's loss weights by 1e-6.

    :param fn: the learner's function; ``mean`` μ and ``logvar`` log σ² are (B, C, H, W)
    :return: True if fn agrees with :meth:`course_lib.nn.vae.DiagonalGaussianDistribution.kl` on every case
    """
    cases = []
    for shape, seed in _POSTERIOR_CASES:
        mean, logvar = _posterior_inputs(shape, seed)
        expected = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1)).kl()  # (B,)

        def mistakes(m=mean, lv=logvar):
            var = lv.exp()
            dims = [1, 2, 3]
            terms = m.pow(2) + var - 1 - lv  # (B, C, H, W), twice the KL of each coordinate
            one_number = tr("you returned one number for the whole batch; the KL is one number per image: "
                            "sum over dims [1, 2, 3] only, giving shape (B,).")
            return [
                (tr("you forgot the 1/2: KL = 1/2 Σ (μ² + σ² - 1 - log σ²)."), lambda: terms.sum(dims)),
                (tr("you took the mean over C, H, W; the KL of independent coordinates adds up: "
                    ".sum(dim=[1, 2, 3]), not .mean(...)."), lambda: 0.5 * terms.mean(dims)),
                (one_number, lambda: 0.5 * terms.sum()),
                (one_number, lambda: 0.5 * terms.sum(dims).mean()),
                (tr("keep one number per image, shape (B,): sum over dims [1, 2, 3] without keepdim=True."),
                 lambda: 0.5 * terms.sum(dims, keepdim=True)),
                (tr("you used σ where σ² belongs: the second term is the variance σ² = exp(logvar), "
                    "not σ = exp(logvar / 2)."), lambda: 0.5 * (m.pow(2) + (0.5 * lv).exp() - 1 - lv).sum(dims)),
                (tr("the last term is log σ² = logvar itself; you used log σ = logvar / 2."),
                 lambda: 0.5 * (m.pow(2) + var - 1 - 0.5 * lv).sum(dims)),
                (tr("logvar is log σ² (the log-variance), not log σ: σ² = exp(logvar) and log σ² = logvar."),
                 lambda: 0.5 * (m.pow(2) + (2 * lv).exp() - 1 - 2 * lv).sum(dims)),
                (tr("check the sign: a KL divergence is never negative, KL = +1/2 Σ (μ² + σ² - 1 - log σ²)."),
                 lambda: -0.5 * terms.sum(dims)),
                (tr("check the sign of the log term: it is - log σ² (the entropy of q lowers the KL)."),
                 lambda: 0.5 * (m.pow(2) + var - 1 + lv).sum(dims)),
                (tr("you forgot the - 1 in each coordinate: KL = 1/2 Σ (μ² + σ² - 1 - log σ²), which is 0 "
                    "when μ = 0 and σ = 1."), lambda: 0.5 * (m.pow(2) + var - lv).sum(dims)),
                (tr("you forgot μ²: a posterior whose mean is far from 0 costs 1/2 μ² per coordinate."),
                 lambda: 0.5 * (var - 1 - lv).sum(dims)),
                (tr("that is the KL the other way round, KL(N(0, I) || q); the VAE's term is KL(q || N(0, I)) "
                    "= 1/2 Σ (μ² + σ² - 1 - log σ²)."),
                 lambda: 0.5 * ((1 + m.pow(2)) / var - 1 + lv).sum(dims)),
            ]

        cases.append(Case(args=(mean, logvar), expected=expected, where=_shape_text(shape), mistakes=mistakes()))

    return grade(
        fn, cases, check_name="check_kl_diagonal_gaussian", result_name=tr("the KL"),
        success=tr("KL = 1/2 Σ_{c,h,w} (μ² + σ² - 1 - log σ²), one number per image, matches "
                   "DiagonalGaussianDistribution.kl() on 3 batches."),
        generic_hint=tr("σ² = exp(logvar) (logvar may be negative: never take its log or square root), and "
                        "KL = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=[1, 2, 3])."),
        shape_hint=tr("the KL is one number per image, shape (B,): sum over dims [1, 2, 3]."),
        exception_hint=hint_for_exception("(mean, logvar)", "0.5 * (mean**2 + logvar.exp() - 1 - logvar)",
                                           broadcast=False),
    )


def check_reparameterise(fn: Callable) -> bool:
    """Check ``fn(mean, logvar, eps) -> z = μ + σ·ε`` with σ = exp(logvar / 2) (lesson 06).

    The reparameterisation trick: a sample of q(z | x) = N(μ, σ²) written as a function of μ, σ
    and noise ε ~ N(0, I) drawn apart from them, so gradients reach μ and σ. The check draws ε
    as ``DiagonalGaussianDistribution.sample(generator)`` does and compares with its sample.

    :param fn: the learner's function; ``mean``, ``logvar`` and ``eps`` are (B, C, H, W)
    :return: True if fn agrees with :meth:`course_lib.nn.vae.DiagonalGaussianDistribution.sample`
    """
    cases = []
    for shape, seed in _POSTERIOR_CASES:
        mean, logvar = _posterior_inputs(shape, seed)
        posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
        # the noise that sample(generator) draws from the same seed (randn_tensor on the CPU)
        eps = torch.randn(shape, generator=torch.Generator().manual_seed(180 + seed))
        expected = posterior.sample(torch.Generator().manual_seed(180 + seed))

        def mistakes(m=mean, lv=logvar, e=eps):
            std = (0.5 * lv).exp()
            return [
                (tr("logvar is log σ², not σ: the noise is scaled by σ = exp(logvar / 2), "
                    "z = mean + exp(0.5 * logvar) * eps."), lambda: m + lv * e),
                (tr("exp(logvar) is the variance σ²; the noise is scaled by the standard deviation "
                    "σ = exp(logvar / 2)."), lambda: m + lv.exp() * e),
                (tr("check the sign: z = μ + σ·ε. (μ - σ·ε has the same distribution, but the course and "
                    "diffusers add, so a seed gives the same z everywhere.)"), lambda: m - std * e),
                (tr("you returned μ, the mode of q(z | x) (what posterior.mode() gives); a sample adds the "
                    "noise σ·ε."), lambda: m),
                (tr("you forgot the mean: z = μ + σ·ε."), lambda: std * e),
                (tr("μ and σ are swapped: the noise is scaled by σ and shifted by μ, z = μ + σ·ε."),
                 lambda: std + m * e),
                (tr("you added the noise without scaling it by σ: z = μ + σ·ε."), lambda: m + e),
            ]

        cases.append(Case(args=(mean, logvar, eps), expected=expected, where=_shape_text(shape),
                           mistakes=mistakes()))

    def exception_hint(error):
        return hint_for_exception("(mean, logvar, eps)", "mean + exp(0.5 * logvar) * eps", broadcast=False)(error)

    return grade(
        fn, cases, check_name="check_reparameterise", result_name="z",
        success=tr("z = μ + exp(logvar / 2)·ε matches DiagonalGaussianDistribution.sample on 3 batches "
                   "(with the same noise ε)."),
        generic_hint=tr("σ = exp(0.5 * logvar) (logvar may be negative: no square root of it), then "
                        "z = mean + σ * eps with the eps you are given (do not draw new noise)."),
        shape_hint=tr("z has the shape of mean: every coordinate gets its own μ, σ and ε."),
        exception_hint=exception_hint,
    )


# ---------------------------------------------------------------------------------- predict, then run
STRONG_KL_WEIGHT = 1e-2  # 10,000 times the recipe's 1e-6
KL_QUANTITIES = ("spread of mu", "sigma", "sampled round-trip PSNR")
_DIRECTIONS = ("larger", "smaller")
_WHY = {
    "spread of mu": translatable("KL = 1/2 Σ (μ² + σ² - 1 - log σ²): its μ² term pulls every picture's mean toward "
                                 "0, and a weight 10,000 times larger lets it win against the reconstruction."),
    "sigma": translatable("the reconstruction prefers a sure latent (σ → 0); the KL's σ² - 1 - log σ² is smallest at "
                          "σ = 1. Which one wins when the KL weighs 10,000 times more?"),
    "sampled round-trip PSNR": translatable("a sample is z = μ + σ·ε: with the means pulled together and σ pushed "
                                            "toward 1, how much of z still tells the decoder which picture it was?"),
}


@functools.cache
def kl_weight_experiment(steps: int = 4, batch_size: int = 4, lr: float = 5e-4) -> dict[float, dict[str, float]]:
    """Fine-tune the shipped ``shapes-vae`` a few AdamW steps with the recipe's KL weight and with
    ``STRONG_KL_WEIGHT``, from the same start on the same pictures and noise, and measure each (lesson 06).

    The run with the recipe's own weight is the control: a restart of AdamW moves a trained model by
    itself, and only the difference between the two runs is the KL weight's doing. Measured on 8 test
    pictures: "spread of mu" (the standard deviation of μ over pictures and coordinates), "sigma" (the
    median σ of q(z | x)) and "sampled round-trip PSNR" (dB, of D(z) for a sample z ~ q(z | x)).

    :return: {kl_weight: {quantity: value}} for the two weights
    """
    vae, _ = load_course_model("shapes-vae")
    train_images = shapes_tensors("train", steps * batch_size)[0]
    test_images = shapes_tensors("test", 8)[0]
    measured = {}
    for kl_weight in (RECIPES["shapes-vae"].loss_args["kl_weight"], STRONG_KL_WEIGHT):
        model = copy.deepcopy(vae).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(0)
        for step in range(steps):
            batch = {"images": train_images[step * batch_size:(step + 1) * batch_size]}
            loss = vae_loss(model, batch, None, generator, kl_weight=kl_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            posterior = model.encode(test_images)
            sampled = model.decode(posterior.sample(torch.Generator().manual_seed(1))).clamp(-1, 1)
        measured[kl_weight] = {"spread of mu": posterior.mean.std().item(), "sigma": posterior.std.median().item(),
                               "sampled round-trip PSNR": psnr(test_images, sampled)}
    return measured


def check_kl_weight_prediction(fn: Callable) -> bool:
    """Check a prediction ``fn(quantity) -> "larger" | "smaller"`` about a 10,000 times stronger KL weight (lesson 06).

    For each of ``KL_QUANTITIES`` the learner predicts whether it comes out larger or smaller after a
    short fine-tune with β = 1e-2 than after the same fine-tune with the recipe's β = 1e-6; the check
    runs both (:func:`kl_weight_experiment`, about a second) and compares.

    :param fn: the learner's function of one quantity's name
    :return: True if every prediction agrees with the measurement
    """
    predictions = ask_predictions(fn, KL_QUANTITIES, check_name="check_kl_weight_prediction", name="quantity",
                                  answers=_DIRECTIONS)
    if predictions is None:
        return False
    measured = kl_weight_experiment()
    recipe, strong = measured.values()
    for quantity in KL_QUANTITIES:
        direction = "larger" if strong[quantity] > recipe[quantity] else "smaller"
        if predictions[quantity] != direction:
            return not_yet(
                tr("you predicted that the {quantity} comes out {predicted} with β = 1e-2; it came out {direction}: "
                   "{strong:.2f} against {recipe:.2f} with the recipe's β.", quantity=quantity,
                   predicted=predictions[quantity], direction=direction, strong=strong[quantity],
                   recipe=recipe[quantity]),
                tr(_WHY[quantity]))
    return correct(tr("with a KL weight 10,000 times larger the means of q(z | x) draw together, σ grows toward 1, "
                      "and a sample z tells the decoder less about its picture: the pull toward N(0, I) costs "
                      "information."))
