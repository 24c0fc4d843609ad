"""Tests of course_lib.nn.config: the one base of the network configs and the cap on network sizes.

The cap is checked where a config comes from JSON (``from_dict``): each size key against its cap,
then the parameters of the whole network, counted on the meta device, against MAX_PARAMETERS. The
count is checked against the real network's, and Stable Diffusion v1.5's UNet and VAE must pass.
"""

import pytest
import torch

from course_lib.nn import config as network_config
from course_lib.nn.unet import UNet2DConditionModel, UNetConfig
from course_lib.nn.vae import VAEConfig
from course_lib.profiling import count_parameters

TINY_UNET = UNetConfig(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, norm_num_groups=8,
                       cross_attention_dim=12, attention_head_dim=2)
SD15_UNET = UNetConfig(cross_attention_dim=768, sample_size=64)
SD15_VAE = VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def test_parameter_count_on_the_meta_device_is_the_real_count():
    torch.manual_seed(0)
    assert TINY_UNET.parameter_count() == count_parameters(UNet2DConditionModel(TINY_UNET))


def test_stable_diffusion_sizes_pass_the_cap():
    assert SD15_UNET.parameter_count() == 859_520_964  # the published size of SD v1.5's UNet
    assert UNetConfig.from_dict(SD15_UNET.to_dict()) == SD15_UNET
    assert VAEConfig.from_dict(SD15_VAE.to_dict()) == SD15_VAE


def test_round_trip_lists_and_bookkeeping_keys():
    as_json = TINY_UNET.to_dict()
    assert as_json["block_out_channels"] == [16, 32]  # JSON has lists
    restored = UNetConfig.from_dict({**as_json, "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.30"})
    assert restored == TINY_UNET and restored.block_out_channels == (16, 32)
    with pytest.raises(ValueError, match=r"Unknown UNet config key\(s\) \['channels'\]"):
        UNetConfig.from_dict({**as_json, "channels": 3})
    with pytest.raises(TypeError, match=r"UNetConfig.from_dict takes a dict.*got list"):
        UNetConfig.from_dict([("in_channels", 4)])


@pytest.mark.parametrize("key, value, match", [
    ("block_out_channels", [16, 1_000_000], r"block_out_channels=\(16, 1000000\) is above the cap of 16384 \(MAX_WIDTH"),
    ("cross_attention_dim", 20_000, r"cross_attention_dim=20000 is above the cap of 16384"),
    ("layers_per_block", 40, r"layers_per_block=40 is above the cap of 16 \(MAX_LAYERS"),
    ("num_class_embeds", 10 ** 6, r"num_class_embeds=1000000 is above the cap of 100000 \(MAX_CLASSES"),
    ("layers_per_block", 0, r"layers_per_block must be a positive integer or a non-empty tuple"),
    ("in_channels", True, r"in_channels must be a positive integer, got True"),
])
def test_a_size_above_its_cap_is_refused_naming_key_and_cap(key, value, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig.from_dict({**TINY_UNET.to_dict(), key: value})


def test_too_many_blocks_are_refused():
    with pytest.raises(ValueError, match=r"block_out_channels has 9 entries .* cap of 8 \(MAX_LEVELS"):
        VAEConfig(block_out_channels=(32,) * 9, down_block_types=("DownEncoderBlock2D",) * 9,
                  up_block_types=("UpDecoderBlock2D",) * 9)


def test_a_network_above_the_parameter_cap_is_refused_before_any_memory_is_used(monkeypatch):
    """Every key within its cap, the whole too big: refused by from_dict (the JSON path), not by the class."""
    wide = {**SD15_UNET.to_dict(), "block_out_channels": [640, 1280, 2560, 2560]}
    with pytest.raises(ValueError, match=r"describes a network of [2-9],\d{3},\d{3},\d{3} parameters .* above the cap of "
                                         r"2,000,000,000 \(MAX_PARAMETERS in course_lib/nn/config.py\)\. Its size is "
                                         r"set by block_out_channels, layers_per_block"):
        UNetConfig.from_dict(wide)
    UNetConfig(**{**wide, "block_out_channels": tuple(wide["block_out_channels"])})  # in Python: the caller decides
    monkeypatch.setattr(network_config, "MAX_PARAMETERS", 1000)
    with pytest.raises(ValueError, match="above the cap of 1,000"):
        UNetConfig.from_dict(TINY_UNET.to_dict())


def test_classifier_and_judge_configs_share_the_base():
    from course_lib.nn.classifier import ClassifierConfig, JudgeConfig

    for config in (ClassifierConfig(), JudgeConfig(), SD15_VAE, TINY_UNET):
        assert type(config).from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"noisy classifier config num_classes=200000 is above the cap of 100000"):
        ClassifierConfig(num_classes=200_000)
    # a judge of huge pictures: every key within its cap, but its fc layer has 64 * 2048^2 * 64 weights
    with pytest.raises(ValueError, match=r"judge config describes a network of [\d,]+ parameters .*set by channels, "
                                         r"feature_dim, sample_size"):
        JudgeConfig.from_dict({**JudgeConfig().to_dict(), "sample_size": 8192})


def test_the_one_clip_builder_takes_a_config_or_its_dict_and_holds_the_caps():
    from course_lib.nn.text import build_caption_tokenizer, build_tiny_clip, tiny_clip_config

    config = tiny_clip_config(build_caption_tokenizer(), text_layers=1, vision_layers=1)
    torch.manual_seed(0)
    from_config = build_tiny_clip(config)
    torch.manual_seed(0)
    from_dict = build_tiny_clip(config.to_dict())  # a checkpoint's JSON
    assert all(torch.equal(a, b) for a, b in zip(from_config.state_dict().values(), from_dict.state_dict().values()))
    too_wide = config.to_dict()
    too_wide["vision_config"]["hidden_size"] = 20_000
    with pytest.raises(ValueError, match=r"CLIP config vision_config.hidden_size=20000 is above the cap of 16384"):
        build_tiny_clip(too_wide)
    too_big = config.to_dict()
    too_big["text_config"].update(hidden_size=4096, intermediate_size=16384, num_hidden_layers=60)
    with pytest.raises(ValueError, match=r"CLIP config describes a network of [\d,]+ parameters .*\(MAX_PARAMETERS"):
        build_tiny_clip(too_big)
