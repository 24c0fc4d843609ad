"""course_lib.sample_stats: distances between samples and a distribution, each against an independent computation."""

import itertools

import pytest
import torch

from course_lib.sample_stats import (Grid2D, bootstrap_interval, energy_distance, energy_distance_test, total_variation,
                                     total_variation_noise_floor, weighted_moments)


def _normal(seed: int, n: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_energy_distance_is_the_formula_by_loops():
    a, b = _normal(0, 5), _normal(1, 4, shift=0.5)
    between = sum((x - y).norm() for x in a for y in b) / (5 * 4)
    within_a = sum((x - y).norm() for x, y in itertools.permutations(a, 2)) / (5 * 4)
    within_b = sum((x - y).norm() for x, y in itertools.permutations(b, 2)) / (4 * 3)
    assert energy_distance(a, b) == pytest.approx(float(2 * between - within_a - within_b), abs=1e-12)
    assert energy_distance(a, b) == pytest.approx(energy_distance(b, a), abs=1e-12)


def test_energy_distance_tells_a_shift_from_noise():
    same = energy_distance_test(_normal(2, 400), _normal(3, 400), permutations=99, generator=torch.Generator().manual_seed(0))
    shifted = energy_distance_test(_normal(2, 400), _normal(3, 400, shift=0.3), permutations=99,
                                   generator=torch.Generator().manual_seed(0))
    assert same[1] > 0.05 and abs(same[0]) < 0.02
    assert shifted[1] == pytest.approx(0.01) and shifted[0] > 0.05  # no relabelling reaches it: p = 1 / (1 + 99)


def test_grid_probabilities_of_a_normal_match_its_cdf():
    grid = Grid2D(extent=4.0, bins=8)
    probabilities = grid.probabilities(-0.5 * (grid.centres(8) ** 2).sum(1), subdivisions=8)
    edges = torch.linspace(-4, 4, 9, dtype=torch.float64)
    one_axis = torch.special.ndtr(edges[1:]) - torch.special.ndtr(edges[:-1])
    exact = torch.outer(one_axis, one_axis)
    exact = exact / exact.sum()  # the grid's mass, renormalised as probabilities() does
    assert probabilities.sum() == pytest.approx(1.0)
    assert torch.allclose(probabilities, exact, atol=2e-4)
    # rows are y: a density that lives at y > 0 puts its mass in the upper rows
    upper = grid.probabilities(-10 * ((grid.centres() - torch.tensor([0.0, 2.0])) ** 2).sum(1), subdivisions=1)
    assert upper[4:].sum() > 0.99


def test_histogram_cells_and_outside():
    grid = Grid2D(extent=2.0, bins=2)
    samples = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [1.5, 0.5], [3.0, 0.0]], dtype=torch.float64)
    histogram, outside = grid.histogram(samples)
    assert torch.allclose(histogram, torch.tensor([[0.2, 0.2], [0.0, 0.4]], dtype=torch.float64))
    assert outside == pytest.approx(0.2)
    assert grid.centres().tolist() == [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]


def test_total_variation_and_its_noise_floor():
    p = torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    assert total_variation(p, p) == 0.0
    assert total_variation(p, torch.tensor([[0.0, 0.0], [0.5, 0.5]], dtype=torch.float64)) == pytest.approx(1.0)
    assert total_variation(p, p * 0.8, outside=0.2) == pytest.approx(0.2)
    grid = Grid2D(extent=4.0, bins=16)
    probabilities = grid.probabilities(-0.5 * (grid.centres(4) ** 2).sum(1))
    small = total_variation_noise_floor(probabilities, 100, repeats=30, generator=torch.Generator().manual_seed(0))
    large = total_variation_noise_floor(probabilities, 10000, repeats=30, generator=torch.Generator().manual_seed(0))
    assert small.shape == (30,)
    assert large.mean() < small.mean() / 5  # ~ 1/sqrt(N): 10x for 100x the samples, at most
    # exact draws from the density itself sit at the floor
    histogram, outside = grid.histogram(_normal(4, 10000))
    assert total_variation(probabilities, histogram, outside) < float(large.max()) * 1.5


def test_weighted_moments():
    points = _normal(5, 1000)
    equal = weighted_moments(points, torch.zeros(1000, dtype=torch.float64))
    assert torch.allclose(equal.mean, points.mean(0))
    assert torch.allclose(equal.covariance, torch.cov(points.T, correction=0))
    assert equal.effective_sample_size == pytest.approx(1000)
    assert torch.allclose(equal.standard_error, points.std(0, unbiased=False) / 1000**0.5)
    # importance sampling: N(0, I) samples weighted by N(x; m, I) / N(x; 0, I) estimate the mean m
    m = torch.tensor([0.5, -0.3], dtype=torch.float64)
    samples = _normal(6, 50000)
    estimate = weighted_moments(samples, samples @ m - 0.5 * (m @ m))
    assert ((estimate.mean - m).abs() < 4 * estimate.standard_error).all()
    assert torch.allclose(estimate.covariance, torch.eye(2, dtype=torch.float64), atol=0.05)


def test_bootstrap_interval_covers_and_shrinks():
    small, large = _normal(7, 100)[:, 0], _normal(8, 10000)[:, 0]
    low, high = bootstrap_interval(lambda x: float(x.mean()), large, generator=torch.Generator().manual_seed(0))
    assert low < 0 < high or abs(low) < 0.03
    wide = bootstrap_interval(lambda x: float(x.mean()), small, generator=torch.Generator().manual_seed(0))
    assert (wide[1] - wide[0]) > 5 * (high - low)
    # several samples are resampled each on its own
    a, b = _normal(9, 500)[:, 0], _normal(10, 500)[:, 0] + 1
    low, high = bootstrap_interval(lambda x, y: float(y.mean() - x.mean()), a, b, generator=torch.Generator().manual_seed(0))
    assert low < 1 < high


def test_errors():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        energy_distance(torch.zeros(5), torch.zeros(5))
    with pytest.raises(ValueError, match="same grid"):
        total_variation(torch.zeros(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(lambda x: 0.0, torch.zeros(3), level=90)
    with pytest.raises(ValueError, match="one per point"):
        weighted_moments(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"grid.centres\(2\)"):
        Grid2D(1.0, 4).probabilities(torch.zeros(16), subdivisions=2)
    with pytest.raises(ValueError, match="2-D points"):
        Grid2D(1.0, 4).histogram(torch.zeros(5, 3))


def test_proportion_interval_is_wilsons_and_covers_its_level():
    from course_lib.sample_stats import proportion_interval

    low, high = proportion_interval(8, 10, level=0.95)
    # Wilson's 95% interval for 8/10, worked by hand: 0.4902 .. 0.9433
    assert abs(low - 0.4902) < 1e-3 and abs(high - 0.9433) < 1e-3
    assert proportion_interval(0, 5)[0] == 0 and proportion_interval(5, 5)[1] == 1
    assert proportion_interval(0, 5)[1] > 0 and proportion_interval(5, 5)[0] < 1
    # coverage: the interval holds the true rate in about 90% of repeated experiments
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(400):
        k = int((torch.rand(40, generator=g) < 0.3).sum())
        low, high = proportion_interval(k, 40, level=0.9)
        hits += low <= 0.3 <= high
    assert 0.84 < hits / 400 < 0.96
    with pytest.raises(ValueError, match="between 0 and 5"):
        proportion_interval(6, 5)
