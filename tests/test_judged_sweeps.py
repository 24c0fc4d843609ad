"""Tests of lessons 08-09's measurements in course_lib.experiments, on tiny random models:
negative_prompt_sweep (each guidance scale is StableDiffusion.__call__ with the seed's starting noise and
the negative prompt), img2img_sweep (each strength is StableDiffusion.img2img of a drawn picture), both read
by the shapes judge and cached per setting, so a setting gives the same pictures asked alone or with others;
and benchmark_results, the benchmarks' JSON files wherever a notebook runs.
"""

import json

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

from course_lib.captions import ATTRIBUTES
from course_lib.checkpoints import save_checkpoint
from course_lib import experiments
from course_lib.datasets import render_shape
from course_lib.experiments import benchmark_results, img2img_sweep, negative_prompt_sweep
from course_lib.networks import build_network
from course_lib.nn.classifier import split_attribute_logits
from course_lib.pipeline import StableDiffusion
from course_lib.pixels import from_uint8
from course_lib.pretrained import load_course_model
from course_lib.recipes import RECIPES

from _minisd import make_mini_sd

pytest.importorskip("transformers")


@pytest.fixture()
def tiny_world(tmp_path, monkeypatch):
    """A tiny random mini SD and shapes judge in a checkpoint folder, and an empty cache folder."""
    folder = make_mini_sd(tmp_path / "checkpoints")
    torch.manual_seed(7)
    judge_config = RECIPES["shapes-judge"].network_config
    save_checkpoint(folder / "shapes-judge", build_network("JudgeClassifier", judge_config),
                    {"network": "JudgeClassifier", "network_config": judge_config, "step": 0})
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(folder))
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path / "cache"))
    return folder


@pytest.mark.slow
def test_each_scale_is_one_pipeline_call_read_by_the_judge_and_cached(tiny_world):
    result = negative_prompt_sweep("a circle", "red", scales=[1.0, 6.0], num_images=3, steps=2, seed=4)
    assert not result.from_cache
    assert result.images.shape == (2, 3, 3, 64, 64) and result.images.dtype == torch.uint8
    assert result.scales == [1.0, 6.0] and (result.num_images, result.steps, result.seed) == (3, 2, 4)

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_course_model("shapes-judge")
    size = 64 // pipe.vae_scale_factor
    noise = torch.randn((3, 4, size, size), generator=torch.Generator().manual_seed(4))
    for i, scale in enumerate(result.scales):
        images = pipe("a circle", negative_prompt="red", height=64, width=64, num_inference_steps=2,
                      guidance_scale=scale, num_images_per_prompt=3, latents=noise, output_type="np")
        expected = torch.from_numpy(np.round(images * 255)).permute(0, 3, 1, 2)
        assert (result.images[i].float() - expected).abs().max() <= 1
        with torch.no_grad():
            heads = split_attribute_logits(judge(from_uint8(result.images[i].permute(0, 2, 3, 1))))
        assert result.colors[i] == [ATTRIBUTES["color"][k] for k in heads["color"].argmax(1).tolist()]
        assert result.shapes[i] == [ATTRIBUTES["shape"][k] for k in heads["shape"].argmax(1).tolist()]
    for attribute, readings in (("color", result.colors), ("shape", result.shapes)):
        for value in ATTRIBUTES[attribute]:
            assert result.tally(attribute, value) == [row.count(value) for row in readings]
    assert [sum(result.tally("color", c)[i] for c in ATTRIBUTES["color"]) for i in range(2)] == [3, 3]

    again = negative_prompt_sweep("a circle", "red", scales=[6.0], num_images=3, steps=2, seed=4)
    assert again.from_cache  # each scale has its own cache entry
    assert torch.equal(again.images[0], result.images[1]) and again.colors[0] == result.colors[1]


@pytest.mark.slow
def test_a_scale_gives_the_same_pictures_alone_or_with_others(tiny_world):
    both = negative_prompt_sweep(scales=[2.0, 5.0], num_images=2, steps=2, use_cache=False)
    alone = negative_prompt_sweep(scales=[5.0], num_images=2, steps=2, use_cache=False)
    assert not alone.from_cache
    assert torch.equal(both.images[1], alone.images[0])


@pytest.mark.slow
def test_guidance_one_ignores_the_negative_prompt(tiny_world):
    plain = negative_prompt_sweep("a circle", "", scales=[1.0], num_images=2, steps=2, use_cache=False)
    red = negative_prompt_sweep("a circle", "red", scales=[1.0], num_images=2, steps=2, use_cache=False)
    assert torch.equal(plain.images, red.images)
    guided = negative_prompt_sweep("a circle", "red", scales=[7.5], num_images=2, steps=2, use_cache=False)
    assert not torch.equal(plain.images, guided.images)


@pytest.mark.slow
def test_other_arguments_are_another_cache_entry(tiny_world):
    negative_prompt_sweep(scales=[3.0], num_images=2, steps=2)
    assert negative_prompt_sweep(scales=[3.0], num_images=2, steps=2).from_cache
    assert not negative_prompt_sweep(scales=[3.0], num_images=2, steps=2, seed=2).from_cache
    assert not negative_prompt_sweep("a circle", "blue", scales=[3.0], num_images=2, steps=2).from_cache
    assert not negative_prompt_sweep(scales=[3.0, 4.0], num_images=2, steps=2).from_cache  # 4.0 is new


def test_bad_arguments_are_explained(tiny_world):
    with pytest.raises(ValueError, match="scales is empty"):
        negative_prompt_sweep(scales=[])
    with pytest.raises(ValueError, match="guidance scale"):
        negative_prompt_sweep(scales=[-1.0])
    with pytest.raises(ValueError, match="num_images"):
        negative_prompt_sweep(num_images=0)
    result = negative_prompt_sweep(scales=[2.0], num_images=1, steps=1)
    with pytest.raises(ValueError, match="attribute"):
        result.tally("size", "small")


@pytest.mark.slow
def test_img2img_sweep_is_one_img2img_call_per_strength_read_by_the_judge(tiny_world):
    source = {"shape": "square", "color": "green", "size": "small", "position": "center"}
    result = img2img_sweep("a red circle", strengths=[0.0, 0.5, 1.0], source=source, source_seed=3, num_images=2,
                           steps=4, seed=6)
    assert not result.from_cache and result.images.shape == (3, 2, 3, 64, 64) and result.images.dtype == torch.uint8
    assert set(result.readings) == {"shape", "color", "size", "position"}

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_course_model("shapes-judge")
    picture = from_uint8(render_shape("square", "green", "small", "center", rng=3))
    for i, strength in enumerate(result.strengths):
        images = pipe.img2img(picture[None].repeat(2, 1, 1, 1), "a red circle", strength=strength,
                              num_inference_steps=4, generator=torch.Generator().manual_seed(6), output_type="np")
        expected = torch.from_numpy(np.round(images * 255)).permute(0, 3, 1, 2)
        assert (result.images[i].float() - expected).abs().max() <= 1
        with torch.no_grad():
            heads = split_attribute_logits(judge(from_uint8(result.images[i].permute(0, 2, 3, 1))))
        for name, values in ATTRIBUTES.items():
            assert result.readings[name][i] == [values[k] for k in heads[name].argmax(1).tolist()]
    assert result.tally("position", "center") == [row.count("center") for row in result.readings["position"]]

    alone = img2img_sweep("a red circle", strengths=[0.5], source=source, source_seed=3, num_images=2, steps=4, seed=6)
    assert alone.from_cache and torch.equal(alone.images[0], result.images[1])
    assert not img2img_sweep("a red circle", strengths=[0.5], source=source, source_seed=4, num_images=2, steps=4,
                             seed=6).from_cache  # another input picture


def test_img2img_sweep_explains_bad_arguments(tiny_world):
    with pytest.raises(ValueError, match=r"strengths must be a non-empty list of numbers in \[0, 1\]"):
        img2img_sweep(strengths=[0.5, 1.5])
    with pytest.raises(ValueError, match="source color"):
        img2img_sweep(source={"shape": "circle", "color": "purple", "size": "large", "position": "center"})


def test_benchmark_results_reads_the_json_files_in_name_order(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RESULTS_DIR", tmp_path)
    (tmp_path / "bench-b.json").write_text(json.dumps({"value": 2}))
    (tmp_path / "bench-a.json").write_text(json.dumps({"value": 1}))
    (tmp_path / "other.json").write_text("{}")
    assert benchmark_results("bench-*.json") == [{"value": 1, "file": "bench-a.json"},
                                                 {"value": 2, "file": "bench-b.json"}]
    assert benchmark_results("none-*.json") == []


def test_the_results_folder_is_the_repositorys():
    assert experiments.RESULTS_DIR == Path(experiments.__file__).resolve().parents[1] / "benchmarks" / "results"
    assert (experiments.RESULTS_DIR.parent / "minisd_samplers.py").is_file()
