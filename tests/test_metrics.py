"""Tests of course_lib.metrics: each metric checked as the formula it implements."""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from course_lib.metrics import (
    Diversity,
    diversity,
    feature_statistics,
    frechet_distance,
    gaussian_frechet_distance,
    judge_accuracy,
    judge_features,
    judge_frechet_distance,
    judge_predictions,
    per_class_accuracy,
    psnr,
    roughness,
)
from course_lib.nn.classifier import JudgeClassifier, JudgeConfig


class FakeJudge(nn.Module):
    """Predicts the class stored in pixel (0, 0) of each image; features are the first 3 pixels."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # gives the judge a device and a dtype
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert not self.training, "metrics must run the judge in eval mode"
        label = x[:, 0, 0, 0].round().long()
        return nn.functional.one_hot(label, self.num_classes).float() * self.scale

    def features(self, x):
        return x.flatten(1)[:, :3] * self.scale


def images_saying(classes):
    """Images whose pixel (0, 0) holds the class a FakeJudge will read."""
    x = torch.zeros(len(classes), 1, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float32)
    return x


# ----------------------------------------------------------------------------------------------
# Judge helpers


def test_judge_predictions_batches_and_restores_training_mode():
    judge = FakeJudge()
    judge.train()
    classes = [3, 1, 4, 1, 5, 9, 2]
    predictions = judge_predictions(judge, images_saying(classes), batch_size=3)
    assert predictions.tolist() == classes
    assert judge.calls == 3  # 3 + 3 + 1
    assert judge.training  # put back as it was


def test_judge_accuracy_and_per_class_accuracy():
    judge = FakeJudge()
    images = images_saying([0, 0, 1, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])  # right: 0,0,1,1,_,2,2,_ -> 6 of 8
    assert judge_accuracy(judge, images, labels) == pytest.approx(6 / 8)
    per_class = per_class_accuracy(judge, images, labels, num_classes=4)
    # class 0: images 0, 1 right, 7 wrong; class 1: both right; class 2: 2 of 3; class 3: no images
    torch.testing.assert_close(per_class[:3], torch.tensor([2 / 3, 1.0, 2 / 3]))
    assert math.isnan(per_class[3])


def test_accuracy_errors():
    judge = FakeJudge()
    images = images_saying([0, 1])
    with pytest.raises(ValueError, match="labels has 3 entries but the batch has 2 images"):
        judge_accuracy(judge, images, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        judge_accuracy(judge, images, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"images must have shape \(B, C, H, W\)"):
        judge_accuracy(judge, images[0], torch.tensor([0]))
    with pytest.raises(ValueError, match="images contains 16 non-finite values"):
        judge_accuracy(judge, torch.full((1, 1, 4, 4), float("nan")), torch.tensor([0]))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        judge_predictions(judge, images, batch_size=0)
    with pytest.raises(TypeError, match="has no features"):
        judge_features(nn.Linear(2, 2), images)


def test_metrics_run_a_real_judge():
    torch.manual_seed(0)
    judge = JudgeClassifier(JudgeConfig(channels=(4, 8), feature_dim=6, sample_size=8))
    images = torch.rand(20, 1, 8, 8) * 2 - 1
    labels = torch.randint(0, 10, (20,))
    assert 0.0 <= judge_accuracy(judge, images, labels) <= 1.0
    assert judge_features(judge, images).shape == (20, 6)
    assert judge_frechet_distance(judge, images, images) == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Diversity


def test_diversity_of_identical_images_is_zero():
    images = torch.randn(1, 1, 4, 4).expand(6, 1, 4, 4)
    result = diversity(images, torch.tensor([0, 0, 0, 1, 1, 1]), features=torch.ones(6, 5))
    assert result == Diversity(pixels=0.0, features=0.0)


def test_diversity_is_the_mean_pairwise_distance_averaged_over_classes():
    # class 0: three points on a line at 0, 3, 4 (pairwise 3, 4, 1 -> mean 8/3); class 1: two at distance 2
    images = torch.zeros(5, 1, 1, 2)
    images[:3, 0, 0, 0] = torch.tensor([0.0, 3.0, 4.0])
    images[3:, 0, 0, 1] = torch.tensor([1.0, 3.0])
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert diversity(images, labels).pixels == pytest.approx((8 / 3 + 2) / 2)
    assert diversity(images, labels).features is None
    # without labels: one class of all 5 points
    flat = images.flatten(1)
    all_pairs = torch.pdist(flat.double()).mean().item()
    assert diversity(images).pixels == pytest.approx(all_pairs)


def test_diversity_scales_linearly_with_the_spread():
    torch.manual_seed(0)
    images = torch.randn(8, 1, 4, 4)
    labels = torch.tensor([0, 1] * 4)
    features = torch.randn(8, 5)
    base = diversity(images, labels, features)
    scaled = diversity(3.0 * images + 0.7, labels, 2.0 * features - 1.0)  # translation changes nothing
    assert scaled.pixels == pytest.approx(3.0 * base.pixels)
    assert scaled.features == pytest.approx(2.0 * base.features)


def test_diversity_errors():
    images = torch.randn(3, 1, 2, 2)
    with pytest.raises(ValueError, match="at least 2 images of the same class"):
        diversity(images, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"features has shape \(2, 4\), expected \(3, D\)"):
        diversity(images, features=torch.randn(2, 4))
    with pytest.raises(ValueError, match="labels has 2 entries but the batch has 3 images"):
        diversity(images, torch.tensor([0, 0]))


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def whitened(n, d, generator):
    """n points in R^d whose sample mean is exactly 0 and sample covariance exactly I."""
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    z = z - z.mean(0)
    cov = z.T @ z / (n - 1)
    return z @ torch.linalg.inv(torch.linalg.cholesky(cov)).T


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_diagonal_gaussians_closed_form():
    # diagonal covariances: d² = ||μ_a - μ_b||² + Σ_i (σ_a,i - σ_b,i)²
    g = torch.Generator().manual_seed(1)
    f64 = dict(dtype=torch.float64)
    mean_a, mean_b = torch.tensor([0.0, 1.0, -2.0], **f64), torch.tensor([0.5, -1.0, 0.0], **f64)
    std_a, std_b = torch.tensor([1.0, 2.0, 0.5], **f64), torch.tensor([3.0, 0.1, 0.5], **f64)
    expected = ((mean_a - mean_b) ** 2).sum() + ((std_a - std_b) ** 2).sum()
    # from the statistics ...
    assert gaussian_frechet_distance(mean_a, torch.diag(std_a**2), mean_b, torch.diag(std_b**2)) == pytest.approx(
        expected.item(), rel=1e-10
    )
    # ... and from samples whose mean and covariance are exactly those
    a = whitened(50, 3, g) * std_a + mean_a
    b = whitened(80, 3, g) * std_b + mean_b
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-8)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mean, cov = feature_statistics(features)
    torch.testing.assert_close(mean, features.mean(0))
    torch.testing.assert_close(cov, torch.cov(features.T))


def test_frechet_distance_full_covariances_match_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(3)
    m_a, m_b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    r_a, r_b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov_a, cov_b = r_a @ r_a.T + 0.1 * torch.eye(5), r_b @ r_b.T
    # reference: the usual FID code's formula with scipy's general matrix square root of Σ_a Σ_b
    sqrt_product = scipy_linalg.sqrtm((cov_a @ cov_b).numpy()).real
    expected = ((m_a - m_b) ** 2).sum().item() + float(torch.trace(cov_a + cov_b)) - 2 * float(sqrt_product.trace())
    assert gaussian_frechet_distance(m_a, cov_a, m_b, cov_b) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_is_symmetric_and_nonnegative():
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        a = torch.randn(40, 6, generator=g) * torch.rand(6, generator=g)
        b = torch.randn(60, 6, generator=g) @ torch.randn(6, 6, generator=g) + 1.0
        d_ab, d_ba = frechet_distance(a, b), frechet_distance(b, a)
        assert d_ab >= 0
        assert d_ab == pytest.approx(d_ba, rel=1e-8)


def test_frechet_distance_handles_singular_covariances():
    # fewer samples than dimensions and a dead (always-zero) feature, as ReLU features can have
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 10, generator=g)
    a[:, 0] = 0
    d = frechet_distance(a, a + 1.0)
    assert d == pytest.approx(10.0, rel=1e-6)  # same covariance, means differ by 1 in each of 10 dims


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match="a covariance needs at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="features_a has D = 3 dimensions but features_b has D = 4"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"features_b must have shape \(N, D\)"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 3, 1))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(torch.full((5, 3), float("nan")), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"cov_b has shape \(2, 2\), expected \(3, 3\)"):
        gaussian_frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(2))
    judge = FakeJudge()
    with pytest.raises(ValueError, match="Compare images of the same size"):
        judge_frechet_distance(judge, torch.zeros(4, 1, 4, 4), torch.zeros(4, 1, 8, 8))


# ----------------------------------------------------------------------------------------------
# Roughness


def test_roughness_is_zero_for_constant_and_linear_images():
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    images = torch.stack([torch.full((8, 8), 0.3), 0.1 * rows - 0.05 * cols])[:, None]
    assert torch.allclose(roughness(images), torch.zeros(2), atol=1e-10)


def test_roughness_of_a_checkerboard_and_of_a_loop_over_pixels():
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(7), indexing="ij")
    checkerboard = (1.0 - 2.0 * ((rows + cols) % 2))[None, None]          # ±1: each Laplacian is ∓8
    assert roughness(checkerboard).item() == pytest.approx(64.0)
    x = torch.randn(3, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    by_hand = torch.zeros(3)
    for b in range(3):
        values = [(x[b, c, i - 1, j] + x[b, c, i + 1, j] + x[b, c, i, j - 1] + x[b, c, i, j + 1] - 4 * x[b, c, i, j]) ** 2
                  for c in range(2) for i in range(1, 4) for j in range(1, 5)]
        by_hand[b] = sum(values) / len(values)
    assert torch.allclose(roughness(x), by_hand, rtol=1e-5)


def test_real_digits_are_smoother_than_noise():
    from course_lib.datasets import digits_tensors
    digits, _ = digits_tensors("test")
    noise = torch.rand(digits.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert roughness(digits).max() < roughness(noise).min()


def test_roughness_errors():
    with pytest.raises(ValueError, match="at least 3x3"):
        roughness(torch.zeros(1, 1, 2, 5))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        roughness(torch.zeros(4, 4))


# ----------------------------------------------------------------------------------------------
# PSNR


def test_psnr_of_identical_images_is_infinite():
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    assert psnr(x, x) == math.inf


def test_psnr_matches_its_formula_for_a_known_noise_level():
    # a perturbation of exactly ±δ in every pixel has MSE = δ², so PSNR = 10 log10(R² / δ²)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    delta = 0.1
    signs = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
    expected = 10 * math.log10(2.0**2 / delta**2)  # ≈ 26.02 dB
    assert psnr(x, x + delta * signs) == pytest.approx(expected, rel=1e-6)
    assert psnr(x, x + delta * signs, data_range=1.0) == pytest.approx(10 * math.log10(1 / delta**2), rel=1e-6)
    per_image = psnr(x, x + delta * signs, reduction="none")
    assert per_image.shape == (4,)
    torch.testing.assert_close(per_image, torch.full((4,), expected))


def test_psnr_is_the_mean_of_per_image_values():
    x = torch.zeros(2, 1, 2, 2)
    y = x.clone()
    y[0] += 0.1
    y[1] += 0.2
    values = [10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)]
    assert psnr(x, y) == pytest.approx(sum(values) / 2, rel=1e-6)


def test_psnr_errors():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"a has shape \(2, 1, 4, 4\) and b has shape \(2, 1, 4, 2\)"):
        psnr(x, x[..., :2])
    with pytest.raises(ValueError, match="data_range must be positive"):
        psnr(x, x, data_range=0)
    with pytest.raises(ValueError, match="Unknown reduction 'sum'"):
        psnr(x, x, reduction="sum")


def test_sample_report_combines_the_metrics():
    from course_lib.metrics import judge_accuracy, judge_features, sample_report

    torch.manual_seed(0)

    class FakeJudge(torch.nn.Module):
        """Reads the class off the mean brightness of the first row; features = first two pixels."""

        def features(self, x):
            return x.flatten(1)[:, :2]

        def forward(self, x):
            return torch.nn.functional.one_hot(((x[:, 0, 0].mean(1) + 1) * 4.99).long().clamp(0, 9), 10).float()

    images = torch.rand(40, 1, 4, 4) * 2 - 1
    labels = ((images[:, 0, 0].mean(1) + 1) * 4.99).long().clamp(0, 9)
    labels[:10] = (labels[:10] + 1) % 10                       # a quarter of the "samples" are wrong
    report = sample_report(FakeJudge(), images, labels, torch.rand(50, 1, 4, 4) * 2 - 1)
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["accuracy"] == pytest.approx(judge_accuracy(FakeJudge(), images, labels))
    assert len(report["per_class_accuracy"]) == 10
    assert report["diversity_pixels"] > 0 and report["diversity_features"] > 0
    assert report["frechet_distance"] >= 0


def test_shapes_prompt_grid_covers_every_full_prompt_once():
    from course_lib.metrics import shapes_prompt_grid

    seen, heldout = shapes_prompt_grid(), shapes_prompt_grid(heldout=True)
    assert len(seen) == 160 and len(heldout) == 20
    assert len({w["prompt"] for w in seen + heldout}) == 180
    assert {(w["shape"], w["color"]) for w in heldout} == {("triangle", "green"), ("circle", "blue")}
    assert seen[0]["prompt"] == "a small red circle in the top left"


def test_shapes_judge_report_counts_what_was_asked():
    from course_lib.metrics import shapes_judge_report

    # a fake judge that always answers: circle, red, small, top left (the first value of each head)
    class Fixed(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 16)
            logits[:, [0, 3, 9, 11]] = 5.0
            return logits

    wanted = [
        {"shape": "circle", "color": "red", "size": "small", "position": "top left"},  # all right
        {"shape": "circle", "color": "blue", "size": "small", "position": "top left"},  # colour wrong
        {"shape": "square", "color": "red", "size": "large", "position": "center"},  # 3 wrong
        {"shape": "circle"},  # only the shape asked: right
    ]
    report = shapes_judge_report(Fixed(), torch.zeros(4, 3, 64, 64), wanted)
    assert report == {"shape": 0.75, "color": 0.75, "size": 0.75, "position": 0.75, "all": 0.5,
                      "color_and_shape": 0.5}
    with pytest.raises(ValueError, match="one dict per image"):
        shapes_judge_report(Fixed(), torch.zeros(3, 3, 64, 64), wanted)
