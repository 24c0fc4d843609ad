"""LoRA adapters and a new word (course_lib.lora), and the orange data and 7-colour judge (course_lib.orange)."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from course_lib.captions import COLOR_JITTER
from course_lib.losses import adapter_latent_diffusion_loss, latent_diffusion_loss
from course_lib.schedules import make_schedule
from course_lib.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from course_lib.lora import (ADAPTER_NETWORK, AdaptedModel, AdaptedModelConfig, AdapterConfig, LORA_TARGET_MODULES,
                             add_decoder_lora, add_lora, add_token, adapter_path, available_adapters, has_lora, load_adapter, lora_delta,
                             lora_parameters, mask_token_gradient, remove_lora, save_adapter, unload_adapter)
from course_lib.nn.text import build_caption_tokenizer, encode_text, tiny_clip_config, tokenize_prompts
from course_lib.nn.unet import UNet2DConditionModel, UNetConfig
from course_lib.orange import (EXTENDED_ATTRIBUTES, EXTENDED_JUDGE_HEADS, ORANGE_RGB, colored_caption,
                               extended_judge_report, orange_prompt_grid, orange_tensors)
from course_lib.sample_stats import proportion_interval

sys.path.insert(0, str(Path(__file__).parent))
from _minisd import TEXT_WIDTH, UNET_CONFIG  # noqa: E402
from _tiny_vae import tiny_vae  # noqa: E402


def tiny_unet(seed: int = 0, **changes) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(UNetConfig.from_dict({**UNET_CONFIG, **changes})).eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_caption_tokenizer()
    config = tiny_clip_config(tokenizer, text_hidden_size=TEXT_WIDTH, text_layers=1, vision_hidden_size=32,
                              vision_layers=1, num_heads=2, patch_size=32, projection_dim=16)
    return tokenizer, CLIPTextModel(config.text_config).eval()


def unet_output(unet, states):
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(states.shape[0], 4, 8, 8, generator=generator)
    with torch.no_grad():
        return unet(z, torch.full((states.shape[0],), 400), encoder_hidden_states=states)


def randomise_lora(unet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(unet):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


# --------------------------------------------------------------------------------------------- the update


def test_lora_update_formula_equals_peft_forward():
    """W' = W + (α / r) B A: the layer peft builds computes x W'^T + b."""
    torch.manual_seed(0)
    model = nn.Module()
    model.to_q = nn.Linear(6, 5)
    add_lora(model, AdapterConfig(rank=2, alpha=3.0, target_modules=("to_q",), token=None))
    randomise_lora(model)
    layer = model.to_q
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert A.shape == (2, 6) and B.shape == (5, 2)
    x = torch.randn(4, 6)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ (W + lora_delta(A, B, 3.0)).T + b
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(lora_delta(A, B, 3.0), layer.get_delta_weight("default"))
    # α / r: doubling the rank at the same α halves the scale of B A
    torch.testing.assert_close(lora_delta(torch.cat([A, A]), torch.cat([B, B], dim=1), 3.0), lora_delta(A, B, 3.0))


def test_lora_on_the_unet_adapts_every_attention_projection_and_starts_as_the_base():
    unet = tiny_unet()
    states = torch.randn(2, 16, TEXT_WIDTH, generator=torch.Generator().manual_seed(0))
    before = unet_output(unet, states)
    targets = {name: m for name, m in unet.named_modules() if isinstance(m, nn.Linear)
               and (".attn1." in name or ".attn2." in name) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0")}
    count = add_lora(unet, AdapterConfig(rank=3, alpha=6.0))
    assert count == sum(3 * (m.in_features + m.out_features) for m in targets.values())
    adapted = {name[:-len(".base_layer")] for name, _ in unet.named_modules() if name.endswith(".base_layer")}
    assert adapted == set(targets) and any(".attn1." in n for n in adapted) and any(".attn2." in n for n in adapted)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == \
           {n for n, _ in unet.named_parameters() if ".lora_" in n}
    torch.testing.assert_close(unet_output(unet, states), before, rtol=0, atol=0)  # B = 0 at the start
    randomise_lora(unet)
    assert not torch.allclose(unet_output(unet, states), before)
    remove_lora(unet)
    assert not has_lora(unet)
    torch.testing.assert_close(unet_output(unet, states), before, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- the new word


def test_new_token_learned_while_the_rest_of_the_text_encoder_is_unchanged():
    tokenizer, text_encoder = tiny_text_encoder()
    before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    vocab_size = len(tokenizer)
    extended, token_id = add_token(tokenizer, text_encoder, "orange", ("red", "yellow"))
    assert token_id == vocab_size and len(extended) == vocab_size + 1 and len(tokenizer) == vocab_size
    table = text_encoder.get_input_embeddings().weight
    vocab = tokenizer.get_vocab()
    torch.testing.assert_close(table[token_id], (table[vocab["red"]] + table[vocab["yellow"]]) / 2)
    start_row = table[token_id].detach().clone()

    hook = mask_token_gradient(text_encoder, token_id)
    optimizer = torch.optim.AdamW([table], lr=0.05, weight_decay=0.0)
    ids = tokenize_prompts(extended, ["a small orange circle", "a red square", "a orange square in the center"])
    target = torch.randn(3, 16, TEXT_WIDTH, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        loss = (encode_text(text_encoder, ids["input_ids"]) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hook.remove()
    after = text_encoder.state_dict()
    assert not torch.equal(table[token_id], start_row)  # the new row learned
    for key, value in before.items():
        if key.endswith("token_embedding.weight"):
            assert torch.equal(after[key][:vocab_size], value)  # every old row, bit for bit
        else:
            assert torch.equal(after[key], value), key
    assert [n for n, p in text_encoder.named_parameters() if p.requires_grad] == \
           [n for n, _ in text_encoder.named_parameters() if n.endswith("token_embedding.weight")]


def test_without_the_adapter_orange_warns_as_an_unknown_word():
    tokenizer = build_caption_tokenizer()
    with pytest.warns(UserWarning, match=r"\['orange'\]"):
        tokenize_prompts(tokenizer, "a orange circle")
    extended, _ = add_token(tokenizer, tiny_text_encoder()[1], "orange")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tokenize_prompts(extended, "a Orange circle")["input_ids"]
    assert ids[0, 2] == len(tokenizer)
    with pytest.warns(UserWarning, match="oranges"):  # a whole word only: "oranges" is not "orange" + "s"
        tokenize_prompts(extended, "a oranges circle")


# --------------------------------------------------------------------------------------------- files


def trained_adapter(tmp_path, rank=2, name="shapes-lora-orange"):
    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    config = AdapterConfig(rank=rank, alpha=4.0)
    add_lora(unet, config)
    randomise_lora(unet)
    extended, token_id = add_token(tokenizer, text_encoder, "orange")
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[token_id] += 0.5
    path = save_adapter(tmp_path / name, unet, config, text_encoder, token_id, base={"unet": "tiny"},
                        info={"step": 3})
    return path, unet, extended, text_encoder


@pytest.mark.slow
def test_save_load_round_trip_and_unload(tmp_path):
    path, trained_unet, trained_tokenizer, trained_encoder = trained_adapter(tmp_path)
    assert json.loads(path.with_suffix(".json").read_text())["network_config"]["adapter"]["rank"] == 2
    ids = tokenize_prompts(trained_tokenizer, ["a orange circle", "a red square"])["input_ids"]
    with torch.no_grad():
        expected = unet_output(trained_unet, encode_text(trained_encoder, ids))

    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    assert available_adapters(tmp_path) == ["orange"]
    loaded = load_adapter(unet, tokenizer, text_encoder, "orange", folder=tmp_path)
    assert loaded.name == "orange" and loaded.token_id == len(tokenizer) and loaded.config.rank == 2
    ids = tokenize_prompts(loaded.tokenizer, ["a orange circle", "a red square"])["input_ids"]
    with torch.no_grad():
        got = unet_output(unet, encode_text(text_encoder, ids))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    original = unload_adapter(unet, text_encoder, loaded)
    assert original is tokenizer and not has_lora(unet)
    assert unet.state_dict().keys() == unet_before.keys()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in unet_before.items())
    assert all(torch.equal(text_encoder.state_dict()[k], v) for k, v in encoder_before.items())
    with pytest.warns(UserWarning, match="orange"):
        tokenize_prompts(original, "a orange circle")
    # by path too, with or without the suffix
    assert adapter_path(path) == adapter_path(str(path)[:-len(".safetensors")]) == path.with_suffix("")


def test_an_adapter_for_another_model_is_refused_naming_the_file(tmp_path):
    path, *_ = trained_adapter(tmp_path)
    other = tiny_unet(block_out_channels=(16, 48), norm_num_groups=8)  # other widths
    tokenizer, text_encoder = tiny_text_encoder()
    with pytest.raises(ValueError, match=r"does not fit this model.*another shape") as error:
        load_adapter(other, tokenizer, text_encoder, path)
    assert str(path.with_suffix("")) in str(error.value) and "trained on unet tiny" in str(error.value)
    assert not has_lora(other) and text_encoder.get_input_embeddings().num_embeddings == len(tokenizer)


def test_rank_zero_is_refused(tmp_path):
    for rank in (0, -2):
        with pytest.raises(ValueError, match="rank r must be a positive integer"):
            AdapterConfig(rank=rank)
    path, *_ = trained_adapter(tmp_path)
    tensors, config = load_checkpoint(path)
    config["network_config"]["adapter"]["rank"] = 0  # a file that says rank 0 (weights and JSON agree)
    save_checkpoint(path, tensors, config)
    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    with pytest.raises(ValueError, match="rank r must be a positive integer"):
        load_adapter(unet, tokenizer, text_encoder, path)
    assert not has_lora(unet)


def test_unknown_adapter_name_lists_the_available_ones(tmp_path):
    trained_adapter(tmp_path)
    trained_adapter(tmp_path, name="shapes-lora-purple")
    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    with pytest.raises(ValueError, match=r"Unknown adapter 'teal'.*'orange', 'purple'"):
        load_adapter(unet, tokenizer, text_encoder, "teal", folder=tmp_path)
    with pytest.raises(ValueError, match="There are none there"):
        load_adapter(unet, tokenizer, text_encoder, "orange", folder=tmp_path / "empty")


def test_fused_projections_and_a_second_adapter_are_refused(tmp_path):
    from course_lib.nn.attention import fuse_projections

    unet = tiny_unet()
    fuse_projections(unet)
    with pytest.raises(ValueError, match="fused Q/K/V projections.*fuse=False"):
        add_lora(unet, AdapterConfig())
    fuse_projections(unet, fuse=False)
    add_lora(unet, AdapterConfig())
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        add_lora(unet, AdapterConfig())
    with pytest.raises(ValueError, match="No linear layer"):
        add_lora(tiny_unet(), AdapterConfig(target_modules=("to_qkv",)))


# --------------------------------------------------------------------------------------------- orange data


def test_orange_pictures_follow_the_shapes_world():
    images, captions, attributes = orange_tensors(300, seed=0)
    again, captions_again, _ = orange_tensors(300, seed=0)
    assert torch.equal(images, again) and captions == captions_again
    assert set(attributes["shape"].tolist()) == {0, 1}  # circles and squares only: triangles held out
    assert (attributes["color"] == EXTENDED_ATTRIBUTES["color"].index("orange")).all()
    assert all("orange" in c.split() for c in captions)
    assert any(c.endswith("in the top left") for c in captions) and any(len(c.split()) == 3 for c in captions)
    pixels = ((images + 1) * 127.5).round().permute(0, 2, 3, 1).reshape(-1, 3)
    painted = pixels[pixels.sum(1) > 0]
    assert (painted - torch.tensor(ORANGE_RGB)).abs().max() <= COLOR_JITTER
    triangles = orange_tensors(50, seed=0, shapes=("triangle",))[2]["shape"]
    assert (triangles == 2).all()


def test_captions_and_prompt_grid():
    assert colored_caption("circle", "orange", "small", "top left") == "a small orange circle in the top left"
    assert colored_caption("square", "orange") == "a orange square"
    grid = orange_prompt_grid()
    assert len(grid) == 20 and grid[0]["prompt"] == "a small orange circle in the top left"
    assert EXTENDED_JUDGE_HEADS == {"shape": 3, "color": 7, "size": 2, "position": 5}


def test_the_reports_intervals_are_wilson_at_95_percent():
    # the textbook example: 8 of 10 -> (0.490, 0.943); it never leaves [0, 1]
    low, high = proportion_interval(8, 10, level=0.95)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    assert proportion_interval(0, 20, level=0.95)[0] == 0.0 and proportion_interval(20, 20, level=0.95)[1] == 1.0
    assert 0.83 < proportion_interval(20, 20, level=0.95)[0] < 0.84


def test_extended_judge_report_counts_each_attribute():
    class Oracle(nn.Module):  # 17 logits that name a fixed reading
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 17)
            logits[:, [0, 3 + 6, 10 + 1, 12 + 4]] = 1.0  # circle, orange, large, center
            return logits

    wanted = [{"shape": "circle", "color": "orange", "size": "large", "position": "center"},
              {"shape": "circle", "color": "red", "size": "large", "position": "center"},
              {"shape": "square", "color": "orange"}]
    report = extended_judge_report(Oracle(), torch.zeros(3, 3, 64, 64), wanted)
    assert report["color"] == round(2 / 3, 4) and report["shape"] == round(2 / 3, 4)
    assert report["all"] == round(1 / 3, 4) and report["size"] == 1.0 and report["count"] == 3
    assert report["all_interval"] == tuple(round(v, 4) for v in proportion_interval(1, 3, level=0.95))
    assert np.isclose(report["color_and_shape"], 1 / 3, atol=1e-4)


# --------------------------------------------------------------------------------------------- training


def adapted_model(rank=2, train_unet=False, token_scale=8.0):
    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    config = AdaptedModelConfig(adapter=AdapterConfig(rank=rank, alpha=4.0), token_scale=token_scale,
                                train_unet=train_unet,
                                base={"unet": "tiny", "text_encoder": "tiny", "tokenizer": "caption"})
    return AdaptedModel(unet, tokenizer, text_encoder, config)


def test_adapted_model_trains_only_the_adapter_and_saves_an_adapter_file(tmp_path):
    model = adapted_model()
    trained = dict(model.named_parameters())
    assert set(trained) == {"token_theta"} | {"unet." + n for n, _ in model.unet.named_parameters() if ".lora_" in n}
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in trained.values())
    frozen = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    unet_base = {k: v.clone() for k, v in model.unet.state_dict().items() if ".lora_" not in k}

    # the hook's row: the same text states as the row written into the table
    ids = tokenize_prompts(model.tokenizer, ["a small orange circle", "a red square"])["input_ids"]
    with torch.no_grad():
        model.token_theta.add_(0.3)
        hooked = encode_text(model.text_encoder, ids)
    _, (tokenizer, text_encoder) = None, tiny_text_encoder()
    _, token_id = add_token(tokenizer, text_encoder, "orange")
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[token_id] = model.token_embedding()[0]
        torch.testing.assert_close(encode_text(text_encoder, ids), hooked)

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.0)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = model.unet(z, torch.full((2,), 400), encoder_hidden_states=encode_text(model.text_encoder, ids)).pow(2).mean()
    loss.backward()
    optimizer.step()
    # the text encoder (its table included) and the UNet's own weights are never written
    assert all(torch.equal(model.text_encoder.state_dict()[k], v) for k, v in frozen.items())
    assert all(torch.equal(model.unet.state_dict()[k], v) for k, v in unet_base.items())

    tensors = model.state_dict()
    assert "text_encoder.token_embedding" in tensors and all(k.startswith(("unet.", "text_encoder.")) for k in tensors)
    path = save_checkpoint(tmp_path / "shapes-lora-orange", model,
                           {"network": ADAPTER_NETWORK, "network_config": model.config.to_dict(), "step": 1})
    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    loaded = load_adapter(unet, tokenizer, text_encoder, path)
    with torch.no_grad():
        expected = unet_output(model.unet, encode_text(model.text_encoder, ids))
        got = unet_output(unet, encode_text(text_encoder, tokenize_prompts(loaded.tokenizer, [
            "a small orange circle", "a red square"])["input_ids"]))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_adapted_model_state_round_trip_is_exact_for_resume():
    model = adapted_model()
    randomise_lora(model.unet, seed=3)
    with torch.no_grad():
        model.token_theta.mul_(1.37)
    saved = model.state_dict()
    other = adapted_model()
    other.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    wrong = dict(saved)
    wrong["text_encoder.token_embedding"] = torch.zeros(1, TEXT_WIDTH + 1)
    with pytest.raises(ValueError, match="another shape.*token_embedding"):
        other.load_state_dict(wrong)
    with pytest.raises(ValueError, match="power of two"):
        adapted_model(token_scale=10.0)


def test_a_whole_unet_fine_tune_is_not_loaded_as_an_adapter(tmp_path):
    model = adapted_model(train_unet=True)
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in model.unet.parameters()) + model.token_theta.numel()
    path = save_checkpoint(tmp_path / "full", model,
                           {"network": ADAPTER_NETWORK, "network_config": model.config.to_dict(), "step": 1})
    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    with pytest.raises(CheckpointError, match="not a LoRA adapter.*whole UNet"):
        load_adapter(unet, tokenizer, text_encoder, path)


# --------------------------------------------------------------------------------------------- the decoder


def test_decoder_lora_adapts_every_decoder_convolution_and_starts_as_the_base():
    vae = tiny_vae()
    z = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vae.decode(z)
    convolutions = {name: m for name, m in vae.named_modules() if isinstance(m, nn.Conv2d)
                    and name.startswith("decoder.") and "norm" not in name}
    count = add_decoder_lora(vae, rank=3)
    assert count == sum(3 * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
                        for m in convolutions.values())
    assert not any(p.requires_grad for n, p in vae.named_parameters() if ".lora_" not in n)
    assert all(".decoder." in "." + n for n, p in vae.named_parameters() if ".lora_" in n)  # the encoder is not adapted
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), before, rtol=0, atol=0)  # B = 0 at the start
        layer = vae.get_submodule("decoder.conv_out")
        randomise_lora(vae)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (r, C_in, k, k), (C_out, r, 1, 1)
        x = torch.randn(1, A.shape[1], 5, 5)
        # ΔW[o, i] = (α / r) Σ_j B[o, j] A[j, i], here α = r
        delta = torch.einsum("oj,jikl->oikl", B[:, :, 0, 0], A)
        expected = nn.functional.conv2d(x, layer.base_layer.weight + delta, layer.base_layer.bias,
                                        padding=layer.base_layer.padding)
        torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="already carries"):
        add_decoder_lora(vae, rank=3)
    with pytest.raises(ValueError, match="rank"):
        add_decoder_lora(tiny_vae(), rank=0)


def decoder_adapter(tmp_path):
    unet, (tokenizer, text_encoder), vae = tiny_unet(), tiny_text_encoder(), tiny_vae()
    config = AdapterConfig(rank=2, alpha=4.0, decoder_rank=3)
    add_lora(unet, config)
    add_decoder_lora(vae, 3)
    randomise_lora(unet)
    randomise_lora(vae, seed=1)
    _, token_id = add_token(tokenizer, text_encoder, "orange")
    path = save_adapter(tmp_path / "shapes-lora-orange", unet, config, text_encoder, token_id, base={"vae": "tiny"},
                        vae=vae)
    return path, vae


def test_an_adapter_with_a_decoder_update_loads_into_the_vae_and_unloads(tmp_path):
    path, trained_vae = decoder_adapter(tmp_path)
    z = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained_vae.decode(z)
    unet, (tokenizer, text_encoder), vae = tiny_unet(), tiny_text_encoder(), tiny_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    with pytest.raises(ValueError, match="also adapts the VAE's decoder.*vae=pipe.vae"):
        load_adapter(unet, tokenizer, text_encoder, path)
    assert not has_lora(unet) and not has_lora(vae)
    loaded = load_adapter(unet, tokenizer, text_encoder, path, vae=vae)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), expected, rtol=0, atol=0)
    unload_adapter(unet, text_encoder, loaded)
    assert not has_lora(vae) and vae.state_dict().keys() == before.keys()
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in before.items())
    # a VAE of other widths: refused, naming the file, nothing changed
    other = tiny_vae("sd15_structure")
    unet, (tokenizer, text_encoder) = tiny_unet(), tiny_text_encoder()
    with pytest.raises(ValueError, match=r"does not fit this model.*vae\.decoder") as error:
        load_adapter(unet, tokenizer, text_encoder, path, vae=other)
    assert str(path.with_suffix("")) in str(error.value)
    assert not has_lora(unet) and not has_lora(other)


def test_the_adapter_loss_adds_the_decoders_reconstruction():
    unet, (tokenizer, text_encoder), vae = tiny_unet(), tiny_text_encoder(), tiny_vae()
    config = AdaptedModelConfig(adapter=AdapterConfig(rank=2, alpha=4.0, decoder_rank=2),
                                base={"unet": "tiny", "text_encoder": "tiny", "tokenizer": "caption", "vae": "tiny"})
    model = AdaptedModel(unet, tokenizer, text_encoder, config, vae=vae)
    randomise_lora(model.vae)
    schedule = make_schedule("scaled_linear", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012)
    generator = torch.Generator().manual_seed(0)
    ids = tokenize_prompts(model.tokenizer, ["a orange circle", "a red square", "a orange square"])["input_ids"]
    batch = {"latent_mean": torch.randn(3, 4, 4, 6, generator=generator), "latent_std": torch.rand(3, 4, 4, 6) * 0.1,
             "input_ids": ids, "null_input_ids": tokenize_prompts(model.tokenizer, [""] * 3)["input_ids"],
             "images": torch.rand(3, 3, 8, 12) * 2 - 1}
    with torch.no_grad():
        got = adapter_latent_diffusion_loss(model, batch, schedule, torch.Generator().manual_seed(5),
                                            caption_dropout=0.0, decoder_batch=2)
        # the same draws, in the same order: first the diffusion loss's, then eps_z
        generator = torch.Generator().manual_seed(5)
        states = {"latent_mean": batch["latent_mean"], "latent_std": batch["latent_std"],
                  "text_states": encode_text(model.text_encoder, ids),
                  "null_text_states": encode_text(model.text_encoder, batch["null_input_ids"][:1])}
        diffusion = latent_diffusion_loss(model.unet, states, schedule, generator, caption_dropout=0.0)
        eps_z = torch.randn(2, 4, 4, 6, generator=generator)
        s = vae.config.scaling_factor
        z = (batch["latent_mean"][:2] + batch["latent_std"][:2] * eps_z) / s
        decoder = ((model.vae.decode(z) - batch["images"][:2]) ** 2).mean()
    torch.testing.assert_close(got, diffusion + decoder)
    assert decoder > 0 and {n.split(".")[0] for n, _ in model.named_parameters()} == {"token_theta", "unet", "vae"}
    with pytest.raises(ValueError, match="give the VAE exactly when"):
        AdaptedModel(tiny_unet(), *tiny_text_encoder(), config)


def test_a_checkpoint_that_is_not_an_adapter_is_refused_naming_the_file(tmp_path):
    unet = tiny_unet()
    save_checkpoint(tmp_path / "shapes-lora-unet", unet, {"network": "UNet2DConditionModel", "step": 1})
    tokenizer, text_encoder = tiny_text_encoder()
    with pytest.raises(CheckpointError, match=r"shapes-lora-unet\.json.*not a LoRA adapter.*UNet2DConditionModel"):
        load_adapter(tiny_unet(), tokenizer, text_encoder, "unet", folder=tmp_path)
    assert text_encoder.get_input_embeddings().num_embeddings == len(tokenizer)
