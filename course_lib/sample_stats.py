"""How far a set of samples is from a distribution, in low dimension (lesson 03), and how sure a measured rate is.

When the target density is known (lesson 03's Gaussian mixture, or a tilted version of it known up
to a constant), a sampler can be checked against it, not only against another sampler:

=====================================  ==============================================================
code name                              what it computes
=====================================  ==============================================================
``energy_distance``                    2 E‖X - Y‖ - E‖X - X'‖ - E‖Y - Y'‖ (Székely), 0 iff same law
``energy_distance_test``               the distance and its permutation p-value
``Grid2D.probabilities``               a density known up to a constant, summed over a grid's cells
``Grid2D.histogram``                   the share of samples in each cell, and outside the grid
``total_variation``                    ½ Σ_cells |p - q| (+ the share of samples outside the grid)
``total_variation_noise_floor``        the total variation an exact sampler shows with N samples
``weighted_moments``                   self-normalised weighted mean, covariance, standard error, ESS
``bootstrap_interval``                 percentile interval of a statistic over resampled rows
``proportion_interval``                Wilson score interval of a rate k / n (a judge's accuracy on n pictures)
=====================================  ==============================================================

Samples are rows: (N, D) tensors; distances are Euclidean. Everything runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .checks import check_finite, check_int_range, check_number

__all__ = [
    "energy_distance",
    "energy_distance_test",
    "Grid2D",
    "total_variation",
    "total_variation_noise_floor",
    "Moments",
    "weighted_moments",
    "bootstrap_interval",
    "proportion_interval",
]


def _rows(x, name: str, minimum: int = 2) -> torch.Tensor:
    check_finite(x, name)
    if x.ndim != 2 or x.shape[0] < minimum:
        raise ValueError(
            f"{name} must have shape (N, D) with N >= {minimum} samples as rows, got {tuple(x.shape)}. "
            f"Reshape it with {name}.reshape(N, -1)."
        )
    return x.detach().double()


def _energy_from_distances(distances: torch.Tensor, in_a: torch.Tensor) -> torch.Tensor:
    """Energy distance from the (n+m, n+m) distance matrix of the pooled samples and a mask of set A."""
    a = in_a.to(distances.dtype)  # indicator vectors: sums over blocks of the matrix are two products
    b = 1 - a
    n, m = float(a.sum()), float(b.sum())
    distances_to_a, distances_to_b = distances @ a, distances @ b  # (n+m,)
    between = (b @ distances_to_a) / (n * m)
    # E‖X - X'‖ over pairs of distinct samples (the diagonal is 0): a U-statistic, unbiased
    within_a = (a @ distances_to_a) / (n * (n - 1))
    within_b = (b @ distances_to_b) / (m * (m - 1))
    # E(P, Q) = 2 E‖X - Y‖ - E‖X - X'‖ - E‖Y - Y'‖                    (Székely & Rizzo 2013, eq. 1)
    return 2 * between - within_a - within_b


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance between two sets of samples: 0 in expectation when they have the same law.

    :param a: samples of P, (n, D), n >= 2
    :param b: samples of Q, (m, D), m >= 2
    :return: the unbiased estimate of 2 E‖X - Y‖ - E‖X - X'‖ - E‖Y - Y'‖ (may be slightly < 0)
    """
    a, b = _rows(a, "a"), _rows(b, "b")
    pooled = torch.cat([a, b])
    in_a = torch.arange(len(pooled)) < len(a)
    return float(_energy_from_distances(torch.cdist(pooled, pooled), in_a))


def energy_distance_test(a: torch.Tensor, b: torch.Tensor, permutations: int = 200,
                         generator: torch.Generator | None = None) -> tuple[float, float]:
    """The energy distance and its permutation p-value (is it larger than relabelling the pooled set gives?).

    :param a: samples of P, (n, D)
    :param b: samples of Q, (m, D)
    :param permutations: number of random relabellings
    :param generator: CPU generator for the relabellings
    :return: (distance, p-value); p = (1 + #{permuted >= observed}) / (1 + permutations)
    """
    a, b = _rows(a, "a"), _rows(b, "b")
    check_int_range(permutations, "permutations", 1)
    pooled = torch.cat([a, b])
    distances = torch.cdist(pooled, pooled)  # computed once, reused by every relabelling
    in_a = torch.arange(len(pooled)) < len(a)
    observed = _energy_from_distances(distances, in_a)
    exceed = 0
    for _ in range(permutations):
        shuffled = in_a[torch.randperm(len(pooled), generator=generator)]
        exceed += int(_energy_from_distances(distances, shuffled) >= observed)
    return float(observed), (1 + exceed) / (1 + permutations)


@dataclass(frozen=True)
class Grid2D:
    """A square grid of bins × bins cells over [-extent, extent]², to compare samples with a density.

    :param extent: half the side of the square
    :param bins: cells per side
    """

    extent: float
    bins: int

    def __post_init__(self):
        check_number(self.extent, "extent", minimum=1e-9)
        check_int_range(self.bins, "bins", 1)

    @property
    def cell_width(self) -> float:
        return 2 * self.extent / self.bins

    def centres(self, subdivisions: int = 1) -> torch.Tensor:
        """Centres of the cells (each split into subdivisions² sub-cells), ((bins·s)², 2), row-major in y.

        Point i·(bins·s) + j has x = j-th centre, y = i-th centre, so ``values.reshape(bins·s, bins·s)``
        is an image with y along the rows (``imshow(..., origin="lower")``).
        """
        check_int_range(subdivisions, "subdivisions", 1)
        count = self.bins * subdivisions
        edges = torch.linspace(-self.extent, self.extent, count + 1, dtype=torch.float64)
        centres = (edges[:-1] + edges[1:]) / 2
        grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
        return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)

    def probabilities(self, log_density: torch.Tensor, subdivisions: int = 4) -> torch.Tensor:
        """A density known up to a constant, integrated over every cell and normalised on the grid.

        Midpoint rule on subdivisions² sub-cells per cell; the mass outside the grid is taken as 0,
        so choose the extent where the density is negligible.

        :param log_density: log of the density (up to a constant) at ``self.centres(subdivisions)``, ((bins·s)²,)
        :param subdivisions: sub-cells per cell side, s
        :return: (bins, bins) probabilities summing to 1, y along the rows
        """
        check_int_range(subdivisions, "subdivisions", 1)
        count = self.bins * subdivisions
        check_finite(log_density, "log_density")
        if log_density.shape != (count * count,):
            raise ValueError(
                f"log_density has shape {tuple(log_density.shape)}, expected ({count * count},): its values at "
                f"grid.centres({subdivisions})."
            )
        # p_cell ∝ Σ_{sub-cells} exp(log p(centre)) (the sub-cell area is the same everywhere)
        weights = torch.softmax(log_density.detach().double(), dim=0)
        return weights.reshape(self.bins, subdivisions, self.bins, subdivisions).sum(dim=(1, 3))

    def histogram(self, samples: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The share of samples in every cell (bins, bins), y along the rows, and the share outside."""
        samples = _rows(samples, "samples", minimum=1)
        if samples.shape[1] != 2:
            raise ValueError(f"samples must be 2-D points (N, 2), got {tuple(samples.shape)}.")
        index = ((samples + self.extent) / self.cell_width).floor().long()  # (N, 2): column (x), row (y)
        inside = ((index >= 0) & (index < self.bins)).all(dim=1)
        flat = index[inside, 1] * self.bins + index[inside, 0]
        counts = torch.bincount(flat, minlength=self.bins * self.bins).double()
        return (counts / len(samples)).reshape(self.bins, self.bins), float((~inside).double().mean())


def total_variation(probabilities: torch.Tensor, histogram: torch.Tensor, outside: float = 0.0) -> float:
    """Total variation distance ½ Σ |p - q| between cell probabilities and a histogram of samples.

    :param probabilities: the target's cell probabilities (bins, bins), summing to 1
    :param histogram: the samples' shares of the same cells
    :param outside: the share of samples outside the grid (the target puts none there)
    :return: a number in [0, 1]
    """
    check_finite(probabilities, "probabilities")
    check_finite(histogram, "histogram")
    if probabilities.shape != histogram.shape:
        raise ValueError(f"probabilities {tuple(probabilities.shape)} and histogram {tuple(histogram.shape)} "
                         f"must be on the same grid.")
    # TV(p, q) = ½ Σ_cells |p - q|  (+ ½ the samples' mass outside, where p has none)
    return 0.5 * float((probabilities.double() - histogram.double()).abs().sum()) + 0.5 * outside


def total_variation_noise_floor(probabilities: torch.Tensor, num_samples: int, repeats: int = 50,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """The total variation of histograms of ``num_samples`` exact draws from the cells: what a perfect sampler shows.

    :param probabilities: cell probabilities (any shape), summing to 1
    :param num_samples: N, the size of the sample being compared
    :param repeats: how many exact histograms to draw
    :param generator: CPU generator
    :return: (repeats,) total variations
    """
    check_int_range(num_samples, "num_samples", 1)
    check_int_range(repeats, "repeats", 1)
    flat = probabilities.detach().double().reshape(-1)
    values = []
    for _ in range(repeats):
        cells = torch.multinomial(flat, num_samples, replacement=True, generator=generator)
        histogram = torch.bincount(cells, minlength=flat.numel()).double() / num_samples
        values.append(total_variation(flat, histogram))
    return torch.tensor(values, dtype=torch.float64)


class Moments(NamedTuple):
    """Weighted mean (D,), covariance (D, D), standard error of the mean (D,), effective sample size."""

    mean: torch.Tensor
    covariance: torch.Tensor
    standard_error: torch.Tensor
    effective_sample_size: float


def weighted_moments(points: torch.Tensor, log_weights: torch.Tensor) -> Moments:
    """Moments of points under self-normalised weights w_i ∝ exp(log_weights_i).

    Two uses in lesson 03: a density on a grid (points = cell centres, weights = the density), and
    importance sampling (points drawn from p, weights = a likelihood, e.g. E[x_0 | x_t]).

    :param points: (N, D)
    :param log_weights: (N,), log of unnormalised weights
    :return: :class:`Moments`; the standard error is the delta-method one of self-normalised
        importance sampling, sqrt(Σ w_i² (x_i - mean)²), and ESS = 1 / Σ w_i²
    """
    points = _rows(points, "points", minimum=1)
    check_finite(log_weights, "log_weights")
    if log_weights.shape != (points.shape[0],):
        raise ValueError(f"log_weights has shape {tuple(log_weights.shape)}, expected ({points.shape[0]},): one per point.")
    # w_i = exp(l_i) / Σ_j exp(l_j)
    weights = torch.softmax(log_weights.detach().double(), dim=0)
    mean = weights @ points  # Σ w_i x_i
    centred = points - mean
    covariance = (centred * weights[:, None]).T @ centred  # Σ w_i (x_i - m)(x_i - m)ᵀ
    # SE(m)² ≈ Σ w_i² (x_i - m)²                                       (self-normalised importance sampling)
    standard_error = ((weights**2)[:, None] * centred**2).sum(0).sqrt()
    return Moments(mean, covariance, standard_error, float(1 / (weights**2).sum()))


def bootstrap_interval(statistic: Callable[..., float], *samples: torch.Tensor, resamples: int = 200,
                       level: float = 0.9, generator: torch.Generator | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval: the statistic on sets of rows drawn with replacement.

    :param statistic: ``statistic(*samples) -> float``
    :param samples: one or more (N_i, ...) tensors, each resampled on its own
    :param resamples: number of bootstrap resamples
    :param level: the interval's coverage, e.g. 0.9 for the 5th and 95th percentiles
    :param generator: CPU generator
    :return: (low, high)
    """
    check_int_range(resamples, "resamples", 2)
    level = check_number(level, "level")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}. Use e.g. 0.9.")
    if not samples:
        raise ValueError("bootstrap_interval needs at least one tensor of samples.")
    values = []
    for _ in range(resamples):
        drawn = [s[torch.randint(0, len(s), (len(s),), generator=generator)] for s in samples]
        values.append(float(statistic(*drawn)))
    values = torch.tensor(values, dtype=torch.float64)
    tail = (1 - level) / 2
    return float(values.quantile(tail)), float(values.quantile(1 - tail))


def proportion_interval(successes: int, trials: int, level: float = 0.9) -> tuple[float, float]:
    """Wilson score interval of a rate p = k / n (Wilson 1927), e.g. a judge's accuracy on n pictures.

    With z the normal quantile of (1 + level) / 2 and p̂ = k / n:

        centre = (p̂ + z² / 2n) / (1 + z² / n),   half-width = z √(p̂(1 - p̂)/n + z²/4n²) / (1 + z² / n)

    Unlike p̂ ± z √(p̂(1 - p̂)/n), it stays inside [0, 1] and is not empty at k = 0 or k = n.

    :param successes: k, 0 <= k <= n
    :param trials: n >= 1
    :param level: the coverage, e.g. 0.9
    :return: (low, high)
    """
    check_int_range(trials, "trials", 1)
    check_int_range(successes, "successes", 0, trials, hint="successes counts the trials that succeeded.")
    level = check_number(level, "level")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}. Use e.g. 0.9.")
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + level) / 2, dtype=torch.float64)).item()
    rate, n = successes / trials, trials
    denominator = 1 + z**2 / n
    centre = (rate + z**2 / (2 * n)) / denominator
    half_width = z * (rate * (1 - rate) / n + z**2 / (4 * n**2)) ** 0.5 / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)
