"""LoRA adapters on the pipeline (StableDiffusion.load_lora / unload_lora) and on the command line
(generate --model mini-sd --lora orange|PATH), on a tiny random mini-SD with an adapter made for it."""

import os
import sys
from pathlib import Path

import pytest
import torch

from course_lib.__main__ import main
from course_lib.lora import AdapterConfig, add_lora, add_token, has_lora, lora_parameters, save_adapter
from course_lib.pipeline import StableDiffusion

sys.path.insert(0, str(Path(__file__).parent))
from _minisd import make_mini_sd  # noqa: E402

PROMPTS = ["a large orange circle in the center", "a red square"]


def mini_sd(folder) -> StableDiffusion:
    pipe = StableDiffusion.from_course("mini-sd", directory=folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny mini-SD and, beside it, shapes-lora-orange: random LoRA weights and an "orange" row for it."""
    folder = make_mini_sd(tmp_path_factory.mktemp("mini-sd"))
    pipe = mini_sd(folder)
    config = AdapterConfig(rank=2, alpha=4.0)
    add_lora(pipe.unet, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in lora_parameters(pipe.unet):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    _, token_id = add_token(pipe.tokenizer, pipe.text_encoder, "orange")
    save_adapter(folder / "shapes-lora-orange", pipe.unet, config, pipe.text_encoder, token_id,
                 base={"unet": "tiny mini-sd"}, info={"step": 1})
    return folder


def sample(pipe, prompts=PROMPTS):
    noise = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return pipe(prompts, latents=noise, num_inference_steps=3, guidance_scale=3.0, output_type="latent")


def test_load_lora_by_name_then_unload_restores_the_model(folder):
    pipe = mini_sd(folder)
    tokenizer = pipe.tokenizer
    with pytest.warns(UserWarning, match="orange"):  # without the adapter, an unknown word
        before = sample(pipe)
    loaded = pipe.load_lora("orange")  # found in the folder the pipeline was loaded from
    assert pipe.lora is loaded and loaded.name == "orange" and has_lora(pipe.unet)
    assert pipe.tokenizer is loaded.tokenizer and "orange" in pipe.tokenizer.get_vocab()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the word is known now: no warning
        adapted = sample(pipe)
    assert not torch.allclose(adapted, before, atol=1e-3)
    pipe.unload_lora()
    assert pipe.lora is None and pipe.tokenizer is tokenizer and not has_lora(pipe.unet)
    with pytest.warns(UserWarning, match="orange"):
        assert torch.equal(sample(pipe), before)  # bit for bit the model it was


def test_load_lora_by_path_equals_by_name(folder):
    by_name, by_path = mini_sd(folder), mini_sd(folder)
    by_name.load_lora("orange")
    by_path.load_lora(folder / "shapes-lora-orange.safetensors")
    assert torch.equal(sample(by_name), sample(by_path))


@pytest.mark.slow
def test_load_lora_refusals(folder, tmp_path):
    pipe = mini_sd(folder)
    with pytest.raises(ValueError, match=r"Unknown adapter 'teal'.*Adapters there: 'orange'"):
        pipe.load_lora("teal")
    with pytest.raises(ValueError, match="No LoRA adapter is loaded"):
        pipe.unload_lora()
    pipe.load_lora("orange")
    with pytest.raises(ValueError, match="'orange' is already loaded.*unload_lora"):
        pipe.load_lora("orange")
    pipe.unload_lora()
    other = mini_sd(make_mini_sd(tmp_path / "other", seed=3))  # same shapes: loads; a folder without adapters
    with pytest.raises(ValueError, match="There are none there"):
        other.load_lora("orange")
    other.load_lora(folder / "shapes-lora-orange")
    fused = mini_sd(folder).optimize(compile=False)
    with pytest.raises(ValueError, match="fused Q/K/V projections"):
        fused.load_lora("orange")


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
def test_generate_with_lora(capsys, folder, tmp_path):
    common = ["generate", "--model", "mini-sd", "--prompt", PROMPTS[0], "--checkpoint-dir", folder, "--steps", "2",
              "--num-images", "2", "--device", "cpu", "--no-progress"]
    status, out, err = run(capsys, *common, "--out-dir", tmp_path / "plain")
    assert status == 0 and "'orange'" in err and "not in the tokenizer's vocabulary" in err  # warns, as before
    status, out, err = run(capsys, *common, "--lora", "orange", "--out-dir", tmp_path / "adapted")
    assert status == 0, err
    assert "from mini-sd with the LoRA adapter 'orange', guidance scale 7.5" in out and "warning" not in err
    status, _, err = run(capsys, *common, "--lora", folder / "shapes-lora-orange", "--out-dir", tmp_path / "by-path")
    assert status == 0, err
    for name in ("000.png", "001.png"):
        assert (tmp_path / "adapted" / name).read_bytes() == (tmp_path / "by-path" / name).read_bytes()
        assert (tmp_path / "adapted" / name).read_bytes() != (tmp_path / "plain" / name).read_bytes()


def test_generate_with_an_unknown_adapter_lists_the_available_ones(capsys, folder, tmp_path):
    status, _, err = run(capsys, "generate", "--model", "mini-sd", "--prompt", "a circle", "--checkpoint-dir", folder,
                         "--lora", "teal", "--out", tmp_path / "g.png")
    assert status == 1 and err.startswith("error: Unknown adapter 'teal'") and "'orange'" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(tmp_path / "g.png")
    status, _, err = run(capsys, "generate", "--lora", "orange", "--out", tmp_path / "g.png")
    assert status == 1 and "--lora is for --model mini-sd" in err
