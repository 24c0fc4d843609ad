"""Tests of course_lib.nn.classifier: the noise-aware classifier and the judge."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from course_lib.checks import check_labels
from course_lib.diffusion import q_sample
from course_lib.nn import unet as unet_module
from course_lib.nn.classifier import (
    ClassifierConfig,
    JudgeClassifier,
    JudgeConfig,
    NoisyClassifier,
    random_shift,
)
from course_lib.losses import judge_loss, noisy_classifier_loss
from course_lib.schedules import make_schedule

TINY = ClassifierConfig(block_out_channels=(8, 16), norm_num_groups=4, sample_size=8, num_train_timesteps=50)
TINY_JUDGE = JudgeConfig(channels=(4, 8), feature_dim=12, sample_size=8)


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return NoisyClassifier(TINY)


@pytest.fixture
def judge():
    torch.manual_seed(0)
    return JudgeClassifier(TINY_JUDGE)


@pytest.fixture
def schedule():
    return make_schedule("linear", 50, 1e-4, 0.02)


# ----------------------------------------------------------------------------------------------
# NoisyClassifier


def test_noisy_classifier_output_shape_and_timestep_forms(classifier):
    x_t = torch.randn(3, 1, 8, 8)
    logits = classifier(x_t, torch.tensor([0, 10, 49]))
    assert logits.shape == (3, 10)
    # an int and a (1,) tensor mean "this t for the whole batch"
    same_t = classifier(x_t, torch.tensor([7, 7, 7]))
    torch.testing.assert_close(classifier(x_t, 7), same_t)
    torch.testing.assert_close(classifier(x_t, torch.tensor([7])), same_t)


def test_noisy_classifier_depends_on_t(classifier):
    x_t = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(classifier(x_t, 0), classifier(x_t, 49))


def test_gradient_flows_to_x_t(classifier):
    # classifier guidance needs ∇_{x_t} log p(y | x_t, t), nonzero for every image
    x_t = torch.randn(4, 1, 8, 8, requires_grad=True)
    y = torch.tensor([0, 3, 5, 9])
    log_probs = torch.log_softmax(classifier(x_t, torch.tensor([1, 2, 3, 4])), dim=-1)
    (grad,) = torch.autograd.grad(log_probs.gather(1, y[:, None]).sum(), x_t)
    assert grad.shape == x_t.shape
    assert (grad.flatten(1).abs().sum(dim=1) > 0).all()


def test_noisy_classifier_images_are_independent(classifier):
    # GroupNorm, not BatchNorm: an image's logits do not depend on the rest of the batch
    x_t = torch.randn(4, 1, 8, 8)
    t = torch.tensor([3, 9, 20, 40])
    torch.testing.assert_close(classifier(x_t, t)[1:2], classifier(x_t[1:2], t[1:2]))


def test_noisy_classifier_reuses_unet_blocks(classifier):
    # every formula once: the time embedding and the resnets are the UNet's own classes
    assert isinstance(classifier.time_proj, unet_module.Timesteps)
    assert isinstance(classifier.time_embedding, unet_module.TimestepEmbedding)
    assert all(isinstance(b, unet_module.DownBlock2D) for b in classifier.down_blocks)
    assert isinstance(classifier.down_blocks[0].resnets[0], unet_module.ResnetBlock2D)
    assert isinstance(classifier.down_blocks[0].downsamplers[0], unet_module.Downsample2D)


@pytest.mark.parametrize(
    "x_t, t, error, match",
    [
        (torch.randn(2, 3, 8, 8), 0, ValueError, r"x_t has shape \(2, 3, 8, 8\), expected \(B, 1, 8, 8\)"),
        (torch.randn(2, 1, 16, 16), 0, ValueError, r"expected \(B, 1, 8, 8\)"),
        (torch.randn(1, 8, 8), 0, ValueError, r"expected \(B, 1, 8, 8\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), 0, ValueError, "floating-point"),
        (torch.randn(2, 1, 8, 8), 50, ValueError, r"t out of range.*0 <= t <= 49"),
        (torch.randn(2, 1, 8, 8), torch.tensor([-1, 3]), ValueError, "t out of range"),
        (torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]), ValueError, "3 timesteps but x_t has 2 images"),
        (torch.randn(2, 1, 8, 8), "5", TypeError, "t must be an int or a LongTensor"),
    ],
)
def test_noisy_classifier_bad_input(classifier, x_t, t, error, match):
    with pytest.raises(error, match=match):
        classifier(x_t, t)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_out_channels=(8, 12), norm_num_groups=8), "norm_num_groups=8 must divide"),
        (dict(sample_size=6, block_out_channels=(8, 8, 8)), "sample_size=6 must be divisible by 4"),
        (dict(num_classes=0), r"num_classes must be a positive integer"),
        (dict(block_out_channels=()), r"block_out_channels must be a positive integer"),
    ],
)
def test_classifier_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassifierConfig(**kwargs)


def test_configs_round_trip_through_dicts():
    assert ClassifierConfig.from_dict(TINY.to_dict()) == TINY
    assert JudgeConfig.from_dict(TINY_JUDGE.to_dict()) == TINY_JUDGE
    with pytest.raises(ValueError, match=r"Unknown judge config key\(s\) \['width'\]"):
        JudgeConfig.from_dict({"width": 3})
    with pytest.raises(TypeError, match="config must be a ClassifierConfig"):
        NoisyClassifier(TINY_JUDGE)


# ----------------------------------------------------------------------------------------------
# The noisy classifier's loss


def test_noisy_classifier_loss_is_cross_entropy_on_q_sample(classifier, schedule):
    # the loss redrawn by hand from the same generator state: t, then ε, then q_sample, then CE
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 9])
    loss = noisy_classifier_loss(classifier, x0, y, schedule, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 50, (5,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    expected = torch.nn.functional.cross_entropy(classifier(q_sample(x0, t, noise, schedule), t), y)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert classifier.head.weight.grad is not None


def test_noisy_classifier_loss_errors(classifier, schedule):
    x0 = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\].*from 0 to 10"):
        noisy_classifier_loss(classifier, x0, torch.tensor([0, 10]), schedule)
    with pytest.raises(ValueError, match="labels has 3 entries but the batch has 2 images"):
        noisy_classifier_loss(classifier, x0, torch.tensor([0, 1, 2]), schedule)
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 8, 8\)"):
        noisy_classifier_loss(classifier, x0[:, 0], torch.tensor([0, 1]), schedule)
    with pytest.raises(ValueError, match="schedule has T = 1000 steps but the classifier was built for"):
        noisy_classifier_loss(classifier, x0, torch.tensor([0, 1]), make_schedule("linear", 1000))


@pytest.mark.parametrize(
    "labels, error, match",
    [
        ([1, 2], TypeError, "labels must be a torch.Tensor"),
        (torch.tensor([1.0, 2.0]), ValueError, "integer tensor.*float32"),
        (torch.tensor([[1, 2]]), ValueError, r"shape \(1, 2\), expected \(B,\)"),
        (torch.tensor([-1, 2]), ValueError, r"from -1 to 2"),
    ],
)
def test_check_labels(labels, error, match):
    with pytest.raises(error, match=match):
        check_labels(labels, 10, 2)


# ----------------------------------------------------------------------------------------------
# Judge


def test_judge_shapes(judge):
    x = torch.randn(3, 1, 8, 8)
    assert judge(x).shape == (3, 10)
    features = judge.features(x)
    assert features.shape == (3, 12)
    assert (features >= 0).all()  # after a ReLU


def test_judge_logits_are_the_head_of_its_features(judge):
    judge.eval()  # no dropout
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(judge(x), judge.head(judge.features(x)))


def test_judge_shares_no_parameters_with_the_guidance_classifier(judge, classifier):
    judge_params = {id(p) for p in judge.parameters()}
    assert not judge_params & {id(p) for p in classifier.parameters()}
    assert not any(isinstance(m, unet_module.ResnetBlock2D) for m in judge.modules())


def test_judge_bad_input(judge):
    with pytest.raises(ValueError, match=r"x has shape \(2, 1, 16, 16\), expected \(B, 1, 8, 8\)"):
        judge(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        judge_loss(judge, torch.randn(2, 1, 8, 8), torch.tensor([3, 12]))
    with pytest.raises(ValueError, match="JudgeConfig.sample_size=12 must be divisible by 8"):
        JudgeConfig(sample_size=12, channels=(4, 4, 4))


def test_judge_loss_without_shift_is_plain_cross_entropy(judge):
    judge.eval()
    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([1, 2, 3, 4])
    expected = torch.nn.functional.cross_entropy(judge(x), y)
    torch.testing.assert_close(judge_loss(judge, x, y, max_shift=0), expected)


# ----------------------------------------------------------------------------------------------
# random_shift


def test_random_shift_translates_each_image_within_the_bound():
    x = torch.arange(2 * 36, dtype=torch.float32).reshape(2, 1, 6, 6)
    shifted = random_shift(x, 2, torch.Generator().manual_seed(0), fill=-1.0)
    assert shifted.shape == x.shape
    for image, original in zip(shifted, x):
        # find (dy, dx) such that image[i, j] = original[i - dy, j - dx] wherever that pixel exists
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                expected = torch.full_like(original, -1.0)
                src = original[:, max(0, -dy):6 - max(0, dy), max(0, -dx):6 - max(0, dx)]
                expected[:, max(0, dy):6 - max(0, -dy), max(0, dx):6 - max(0, -dx)] = src
                matches.append(torch.equal(image, expected))
        assert sum(matches) == 1


def test_random_shift_zero_is_identity_and_errors():
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(random_shift(x, 0), x)
    with pytest.raises(ValueError, match="max_shift must be at least 0"):
        random_shift(x, -1)
    with pytest.raises(ValueError, match=r"expected \(B, C, H, W\)"):
        random_shift(x[0], 1)
