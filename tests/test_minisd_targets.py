"""Targets of the shipped shapes-world checkpoints (lessons 06-09), measured on every `make test`.

The full measurement is benchmarks/minisd_quality.py (every prompt, 50 DDIM steps); these tests
take a sample of it so they stay fast, with thresholds a little below what it measured. The judge
(shapes-judge) is a CNN trained on pictures: it shares no code or weights with the mini-SD.
"""

import pytest
import torch

from course_lib.datasets import shapes_attributes, shapes_tensors
from course_lib.metrics import clip_zero_shot_accuracy, psnr, shapes_judge_report, shapes_prompt_grid
from course_lib.pretrained import available_checkpoints, load_course_model

NEEDED = {"shapes-vae", "shapes-clip", "shapes-ldm", "shapes-judge"}
pytestmark = [pytest.mark.slow,  # samples the mini-SD and scores it (tens of seconds)
              pytest.mark.skipif(not NEEDED <= set(available_checkpoints()),
                                              reason="the shapes checkpoints are not in the checkpoint folder")]


@pytest.fixture(scope="module")
def judge():
    return load_course_model("shapes-judge")[0]


@pytest.fixture(scope="module")
def pipe():
    from course_lib.pipeline import StableDiffusion

    pipe = StableDiffusion.from_course("mini-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _names(split, n):
    from course_lib.captions import ATTRIBUTES

    ids = shapes_attributes(split)
    return [{name: values[int(ids[name][i])] for name, values in ATTRIBUTES.items()} for i in range(n)]


@torch.no_grad()
def test_the_autoencoder_keeps_30_db_and_every_attribute(judge):
    vae, config = load_course_model("shapes-vae")
    assert config["network_config"]["scaling_factor"] == config["metrics"]["scaling_factor"]  # measured, not SD's
    for split in ("test", "heldout"):
        images = shapes_tensors(split)[0][:100]
        reconstruction = vae(images).clamp(-1, 1)
        assert psnr(images, reconstruction) >= 30.0, split
        report = shapes_judge_report(judge, reconstruction, _names(split, 100))
        assert report["all"] >= 0.97, (split, report)  # shape, colour, size and position survive the round trip


@torch.no_grad()
def test_the_tiny_clip_knows_every_attribute():
    clip, _ = load_course_model("shapes-clip")
    accuracy = clip_zero_shot_accuracy(clip, "test", num_images=200)
    assert min(accuracy.values()) >= 0.97, accuracy


def _generate(pipe, grid, scale, steps=25, seed=0):
    images = pipe([w["prompt"] for w in grid], num_inference_steps=steps, guidance_scale=scale,
                  generator=torch.Generator().manual_seed(seed), output_type="np")
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


@torch.no_grad()
def test_guidance_makes_the_mini_sd_draw_what_the_prompt_says(pipe, judge):
    seen = shapes_prompt_grid()[::2]  # 80 of the 160 full prompts, every attribute value present
    guided = shapes_judge_report(judge, _generate(pipe, seen, 7.5), seen)
    unguided = shapes_judge_report(judge, _generate(pipe, seen, 1.0), seen)
    assert guided["all"] >= 0.8, guided  # all four attributes right in at least 80 %
    assert guided["all"] >= unguided["all"] + 0.15, (guided, unguided)


@torch.no_grad()
def test_held_out_pairs_are_composed(pipe, judge):
    heldout = shapes_prompt_grid(heldout=True) * 2  # green triangles and blue circles, never seen in training
    guided = shapes_judge_report(judge, _generate(pipe, heldout, 7.5, seed=1), heldout)
    unguided = shapes_judge_report(judge, _generate(pipe, heldout, 1.0, seed=1), heldout)
    assert guided["color_and_shape"] >= 0.6, guided
    assert guided["color_and_shape"] > unguided["color_and_shape"], (guided, unguided)
