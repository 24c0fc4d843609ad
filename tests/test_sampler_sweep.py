"""Tests of lesson 09's measurements: the Fréchet distance in the tiny CLIP's image features
(course_lib.metrics.clip_image_features, clip_frechet_distance) and the cached sampler sweep
(course_lib.experiments.sampler_sweep), on tiny random models.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from course_lib.captions import ATTRIBUTES
from course_lib.checkpoints import save_checkpoint
from course_lib.experiments import sampler_sweep, sweep_prompts
from course_lib.metrics import (clip_frechet_distance, clip_image_features, feature_statistics,
                                gaussian_frechet_distance, shapes_prompt_grid)
from course_lib.nn.text import build_caption_tokenizer, clip_embeddings, tiny_clip_config
from course_lib.networks import build_network
from course_lib.pipeline import StableDiffusion
from course_lib.recipes import RECIPES

from _minisd import make_mini_sd

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    config = tiny_clip_config(build_caption_tokenizer(), text_hidden_size=16, text_layers=1, vision_hidden_size=16,
                              vision_layers=1, num_heads=2, patch_size=32, projection_dim=8)
    return transformers.CLIPModel(config).eval()


def pictures(count: int, seed: int) -> torch.Tensor:
    return torch.rand((count, 3, 64, 64), generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------------------------
# clip_image_features, clip_frechet_distance


def test_clip_image_features_are_clips_unit_image_embeddings(clip):
    images = pictures(7, 0)
    features = clip_image_features(clip, images, batch_size=3)
    ids = torch.zeros((1, 16), dtype=torch.long)
    with torch.no_grad():
        expected, _ = clip_embeddings(clip, images, ids)
    assert features.shape == (7, 8)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(7))


def test_clip_image_features_clamp_and_keep_training_mode(clip):
    images = pictures(4, 1) * 3  # out of [-1, 1]
    clip.train()
    try:
        features = clip_image_features(clip, images)
        assert clip.training
    finally:
        clip.eval()
    torch.testing.assert_close(features, clip_image_features(clip, images.clamp(-1, 1)))


def test_clip_frechet_distance_is_the_gaussian_formula_on_clip_features(clip):
    generated, real = pictures(12, 2), pictures(20, 3)
    distance = clip_frechet_distance(clip, generated, real)
    expected = gaussian_frechet_distance(*feature_statistics(clip_image_features(clip, generated)),
                                         *feature_statistics(clip_image_features(clip, real)))
    assert distance == pytest.approx(expected, rel=1e-9)
    statistics = feature_statistics(clip_image_features(clip, real))
    assert clip_frechet_distance(clip, generated, reference_statistics=statistics) == pytest.approx(distance)
    assert clip_frechet_distance(clip, real, real) == pytest.approx(0.0, abs=1e-6)
    shifted = clip_frechet_distance(clip, torch.full_like(generated, -1.0) + 0.01 * generated, real)
    assert shifted > distance  # blank pictures are further from random ones than other random ones


def test_clip_frechet_distance_wants_exactly_one_reference(clip):
    images = pictures(3, 4)
    with pytest.raises(ValueError, match="exactly one of reference_images"):
        clip_frechet_distance(clip, images)
    with pytest.raises(ValueError, match="exactly one of reference_images"):
        clip_frechet_distance(clip, images, images, feature_statistics(clip_image_features(clip, images)))


# ----------------------------------------------------------------------------------------------
# sweep_prompts


def test_sweep_prompts_spread_over_every_attribute():
    first = sweep_prompts(16)
    pairs = {(w["shape"], w["color"]) for w in first}
    assert len(pairs) == 16  # every seen colour-shape pair once
    for name in ("shape", "size", "position"):
        assert {w[name] for w in first} == set(ATTRIBUTES[name])
    assert sorted(w["prompt"] for w in sweep_prompts(160)) == sorted(w["prompt"] for w in shapes_prompt_grid())
    assert sweep_prompts(5) == first[:5]
    with pytest.raises(ValueError, match="num_prompts"):
        sweep_prompts(1)


# ----------------------------------------------------------------------------------------------
# sampler_sweep


@pytest.fixture()
def mini_world(tmp_path, monkeypatch):
    """A tiny random mini SD and shapes judge in a checkpoint folder, and an empty cache folder."""
    folder = make_mini_sd(tmp_path / "checkpoints")
    torch.manual_seed(5)
    judge_config = RECIPES["shapes-judge"].network_config
    save_checkpoint(folder / "shapes-judge", build_network("JudgeClassifier", judge_config),
                    {"network": "JudgeClassifier", "network_config": judge_config, "step": 0})
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(folder))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    return folder


@pytest.mark.slow
def test_sampler_sweep_scores_every_run_and_caches_it(mini_world):
    result = sampler_sweep(samplers=("ddim", "ddpm"), steps=(1, 3), num_prompts=3, seed=2, progress=False)
    assert not result.from_cache
    assert result.images.shape == (2, 2, 3, 3, 64, 64) and result.images.dtype == torch.uint8
    assert [w["prompt"] for w in result.wanted] == [w["prompt"] for w in sweep_prompts(3)]
    keys = {"shape", "color", "size", "position", "all", "color_and_shape", "clip_score", "frechet_distance"}
    assert set(result.real) == keys
    for sampler in ("ddim", "ddpm"):
        assert set(result.reports[sampler]) == {1, 3}
        for report in result.reports[sampler].values():
            assert set(report) == keys | {"seconds_per_image"}
            assert 0 <= report["all"] <= 1 and report["frechet_distance"] >= 0 and report["seconds_per_image"] > 0
    assert result.table("all") == [[result.reports[s][n]["all"] for n in (1, 3)] for s in ("ddim", "ddpm")]

    # each run is StableDiffusion.__call__ with the seed's starting noise
    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    for i, sampler in enumerate(("ddim", "ddpm")):
        images = pipe([w["prompt"] for w in result.wanted], height=64, width=64, num_inference_steps=3,
                      sampler=sampler, generator=torch.Generator().manual_seed(2), output_type="np")
        expected = torch.from_numpy(np.round(images * 255)).permute(0, 3, 1, 2)
        assert (result.images[i, 1].float() - expected).abs().max() <= 1

    cached = sampler_sweep(samplers=("ddim", "ddpm"), steps=(1, 3), num_prompts=3, seed=2, progress=False)
    assert cached.from_cache
    assert cached.reports == result.reports and cached.real == result.real
    assert torch.equal(cached.images, result.images)


@pytest.mark.slow
def test_sampler_sweep_recomputes_for_other_arguments_or_checkpoints(mini_world):
    first = sampler_sweep(samplers=("euler",), steps=(2,), num_prompts=2, progress=False)
    assert sampler_sweep(samplers=("euler",), steps=(2,), num_prompts=2, progress=False).from_cache
    assert not sampler_sweep(samplers=("euler",), steps=(2,), num_prompts=2, seed=1, progress=False).from_cache
    make_mini_sd(mini_world, seed=10)  # retrained: other weights in the same files
    again = sampler_sweep(samplers=("euler",), steps=(2,), num_prompts=2, progress=False)
    assert not again.from_cache
    assert not torch.equal(again.images, first.images)


def test_sampler_sweep_explains_bad_arguments(mini_world):
    with pytest.raises(ValueError, match="sampler"):
        sampler_sweep(samplers=("heun",), progress=False)
    with pytest.raises(ValueError, match="must not be empty"):
        sampler_sweep(samplers=(), progress=False)
    with pytest.raises(ValueError, match="steps"):
        sampler_sweep(steps=(0,), progress=False)
