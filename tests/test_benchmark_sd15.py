"""benchmarks/sd15_gpu.py runs end to end on a CPU with the tiny architecture (what a GPU session
runs at SD v1.5's size), and writes every field the lesson and the issue read."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the GPU benchmark script end to end on a tiny model

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "sd15_gpu.py"


def test_sd15_gpu_benchmark_runs_tiny_on_a_cpu(tmp_path):
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("sd15_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--size", "tiny", "--device", "cpu", "--steps", "2", "--repeats", "1",
                           "--out", str(tmp_path)])
    written = json.loads(next(tmp_path.glob("*-tiny.json")).read_text())
    assert written == json.loads(json.dumps(results))
    assert results["errors"] == {} and results["skipped"] == {}
    for key in ("gpu", "torch", "diffusers", "course_eager_s_per_image", "diffusers_eager_s_per_image",
                "course_fast_s_per_image", "diffusers_compiled_s_per_image", "course_eager_s_per_image_4img",
                "course_fast_s_per_image_4img", "sweep_ratio", "per_image_flops"):
        assert results[key], key
    # the same weights give the same UNet output and the same images
    assert results["unet_max_abs_diff_fp32"] < 1e-5
    assert results["image_max_abs_diff_eager_1img"] < 1e-4
    # SD v1.5's layout: one UNet pass at batch 2 and one decode, counted for the tiny widths
    assert results["per_image_flops"] == 2 * results["unet_batch2_flops"] + results["vae_decode_flops"]
    assert [row["technique"] for row in results["ladder"]][:2] == ["eager, float32", "eager, float32"]
    assert len(results["ladder"]) == 5  # no compile row on a CPU
