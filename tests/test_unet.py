"""Tests of course_lib.nn.unet and course_lib.nn.attention.

Equivalence with diffusers' UNet2DConditionModel (weights loaded both ways, outputs compared in
float32), the formulas of the building blocks, and every input error.
"""

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from course_lib.nn.attention import GEGLU, Attention, Transformer2DModel
from course_lib.nn.unet import (
    ResnetBlock2D,
    UNet2DConditionModel,
    UNetConfig,
    timestep_embedding,
)
from course_lib.profiling import count_parameters

# Tiny configurations, given as diffusers UNet2DConditionModel keyword arguments.
CONFIGS = {
    "tiny_cross_attention": dict(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
        attention_head_dim=4,
    ),
    # SD v1.5's block structure at reduced width; attention_head_dim=8 means 8 heads, as in SD
    "sd15_structure": dict(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=16, cross_attention_dim=32,
        attention_head_dim=8,
    ),
    # the digits model of lessons 02-05: no cross-attention, 10 classes + 1 null class
    "digits_class_conditional": dict(
        sample_size=16, in_channels=1, out_channels=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, mid_block_type="UNetMidBlock2D",
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, num_class_embeds=11,
    ),
    # SD 2.x style: linear projections, per-block heads, two transformer layers
    "linear_projection": dict(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=24,
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=2,
    ),
    # no mid block, asymmetric downsample padding, a mid_block_scale_factor that is unused
    "no_mid_block_padding0": dict(
        sample_size=8, in_channels=3, out_channels=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None, block_out_channels=(32, 64), layers_per_block=(1, 2), norm_num_groups=8,
        cross_attention_dim=16, downsample_padding=0,
    ),
    # a cross-attention mid block with a scale factor, and a non-default time embedding
    "mid_scale_freq_shift": dict(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=8,
        attention_head_dim=2, mid_block_scale_factor=1.414, flip_sin_to_cos=False, freq_shift=1,
    ),
}

# Stable Diffusion v1.5's unet/config.json, as published
SD15_CONFIG = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
# Stable Diffusion 2.1's unet/config.json (the keys that matter; the rest are at their defaults)
SD21_CONFIG = dict(
    SD15_CONFIG, _diffusers_version="0.10.0.dev0", attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024,
    dual_cross_attention=False, num_class_embeds=None, only_cross_attention=False, resnet_time_scale_shift="default",
    sample_size=96, upcast_attention=True, use_linear_projection=True, class_embed_type=None,
)


def make_inputs(config: UNetConfig, batch_size=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = config.sample_size
    sample = torch.randn(batch_size, config.in_channels, size, size, generator=g)
    timestep = torch.randint(0, 1000, (batch_size,), generator=g)
    context = torch.randn(batch_size, 5, config.cross_attention_dim, generator=g) if config.has_cross_attention else None
    labels = torch.randint(0, config.num_class_embeds, (batch_size,), generator=g) if config.num_class_embeds else None
    return sample, timestep, context, labels


def small_unet(**overrides) -> UNet2DConditionModel:
    torch.manual_seed(0)
    kwargs = dict(CONFIGS["tiny_cross_attention"], **overrides)
    return UNet2DConditionModel(UNetConfig(**kwargs)).eval()


def digits_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(UNetConfig(**CONFIGS["digits_class_conditional"])).eval()


# ----------------------------------------------------------------------------------------------
# Equivalence with diffusers


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_diffusers_both_ways(name):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(**CONFIGS[name]).eval()
    config = UNetConfig.from_dict(theirs.config)
    ours = UNet2DConditionModel(config).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # diffusers -> ours
    sample, timestep, context, labels = make_inputs(config)
    with torch.no_grad():
        expected = theirs(sample, timestep, context, class_labels=labels).sample
        got = ours(sample, timestep, context, class_labels=labels)
    assert got.shape == sample.shape[:1] + (config.out_channels,) + sample.shape[2:]
    assert (got - expected).abs().max() < 1e-4

    # ours -> diffusers: fresh random weights on our side, loaded strictly into a fresh diffusers model
    torch.manual_seed(1)
    ours = UNet2DConditionModel(config).eval()
    theirs = diffusers.UNet2DConditionModel(**CONFIGS[name]).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        expected = theirs(sample, timestep, context, class_labels=labels).sample
        got = ours(sample, timestep, context, class_labels=labels)
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("sd_config", [SD15_CONFIG, SD21_CONFIG], ids=["sd15", "sd21"])
def test_real_sd_configs_give_diffusers_state_dict_keys_and_shapes(sd_config):
    """Built on the meta device (no memory, no weights): the full SD UNets have diffusers' layout."""
    diffusers = pytest.importorskip("diffusers")
    config = UNetConfig.from_dict(sd_config)
    with torch.device("meta"):
        ours = UNet2DConditionModel(config)
        theirs = diffusers.UNet2DConditionModel.from_config(sd_config)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert count_parameters(ours) == count_parameters(theirs)
    if sd_config is SD15_CONFIG:
        assert count_parameters(ours) == 859_520_964  # the published size of SD v1.5's UNet


def test_attention_head_dim_is_the_number_of_heads_as_in_diffusers():
    config = UNetConfig.from_dict(SD15_CONFIG)
    with torch.device("meta"):
        unet = UNet2DConditionModel(config)
    heads = [m.heads for m in unet.modules() if isinstance(m, Attention)]
    assert set(heads) == {8}  # 8 heads of 40, 80, 160 channels, not heads of 8 channels
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.out_features == 320
    assert UNetConfig.from_dict(SD21_CONFIG).heads_per_block() == (5, 10, 20, 20)  # 64 channels per head
    # num_attention_heads, when given, is the number of heads
    assert UNetConfig(attention_head_dim=64, num_attention_heads=8).heads_per_block() == (8, 8, 8, 8)


def test_timestep_embedding_matches_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0, 1, 17, 999])
    for dim in (32, 33):
        for flip in (True, False):
            for shift in (0, 1):
                expected = embeddings.get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
                assert torch.allclose(timestep_embedding(t, dim, flip, shift), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Formulas


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 3.0, 250.0])
    dim, half = 8, 4
    emb = timestep_embedding(t, dim, flip_sin_to_cos=True, freq_shift=0)
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            omega = 10000 ** (-i / half)  # omega_i = 10000^(-i / half)
            assert emb[b, i].item() == pytest.approx(math.cos(tb * omega), abs=1e-5)
            assert emb[b, half + i].item() == pytest.approx(math.sin(tb * omega), abs=1e-5)
    # sin first without the flip; freq_shift s changes the denominator to half - s
    emb = timestep_embedding(t, dim, flip_sin_to_cos=False, freq_shift=1)
    assert emb[1, 1].item() == pytest.approx(math.sin(3.0 * 10000 ** (-1 / 3)), abs=1e-5)
    # an odd width gets one zero at the end
    assert timestep_embedding(t, 9)[:, -1].eq(0).all()


def test_attention_is_softmax_of_scaled_dot_products():
    torch.manual_seed(0)
    attention = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    x, context = torch.randn(3, 5, 8), torch.randn(3, 7, 6)
    q, k, v = attention.to_q(x), attention.to_k(context), attention.to_v(context)
    heads = []
    for h in range(2):
        qh, kh, vh = (m[..., 4 * h: 4 * (h + 1)] for m in (q, k, v))
        # softmax(Q K^T / sqrt(d)) V
        weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ vh)
    expected = attention.to_out[0](torch.cat(heads, dim=-1))
    assert torch.allclose(attention(x, context), expected, atol=1e-5)
    # self-attention: keys and values from x itself
    self_attention = Attention(query_dim=8, heads=2, dim_head=4)
    assert self_attention(x).shape == (3, 5, 8)


def test_geglu_formula():
    torch.manual_seed(0)
    geglu = GEGLU(6, 4)
    x = torch.randn(2, 3, 6)
    weight, bias = geglu.proj.weight, geglu.proj.bias
    value = x @ weight[:4].T + bias[:4]
    gate = x @ weight[4:].T + bias[4:]
    # GEGLU(x) = (x W + b) * GELU(x V + c)
    assert torch.allclose(geglu(x), value * F.gelu(gate), atol=1e-6)


def test_linear_and_conv_projections_compute_the_same_function():
    torch.manual_seed(0)
    conv = Transformer2DModel(16, num_attention_heads=2, cross_attention_dim=8, norm_num_groups=4)
    linear = Transformer2DModel(16, num_attention_heads=2, cross_attention_dim=8, norm_num_groups=4,
                                use_linear_projection=True)
    state = {k: v[:, :, 0, 0] if k.startswith("proj_") and k.endswith("weight") else v
             for k, v in conv.state_dict().items()}
    linear.load_state_dict(state)
    x, context = torch.randn(2, 16, 4, 6), torch.randn(2, 3, 8)
    assert torch.allclose(conv(x, context), linear(x, context), atol=1e-5)


def test_resnet_block_is_shortcut_plus_residual():
    torch.manual_seed(0)
    block = ResnetBlock2D(8, 16, temb_channels=12, groups=4, output_scale_factor=2.0)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    # out = (shortcut(x) + h) / output_scale_factor with h = 0
    assert torch.allclose(block(x, emb), block.conv_shortcut(x) / 2.0, atol=1e-6)
    assert ResnetBlock2D(8, 8, None, groups=4).conv_shortcut is None  # identity shortcut, no time input


def test_timestep_forms_broadcast_like_diffusers():
    unet = small_unet()
    sample, _, context, _ = make_inputs(unet.config, batch_size=3)
    with torch.no_grad():
        expected = unet(sample, torch.tensor([42, 42, 42]), context)
        for timestep in (42, torch.tensor(42), torch.tensor([42]), 42.0):
            assert torch.allclose(unet(sample, timestep, context), expected, atol=1e-6)


def test_class_labels_condition_the_output():
    unet = digits_unet()
    sample, timestep, _, _ = make_inputs(unet.config, batch_size=2)
    with torch.no_grad():
        out_3 = unet(sample, timestep, class_labels=torch.tensor([3, 3]))
        out_null = unet(sample, timestep, class_labels=10)  # the null class, broadcast
    assert out_3.shape == (2, 1, 16, 16)
    assert not torch.allclose(out_3, out_null)


def test_non_square_input_and_backward():
    unet = small_unet()
    sample = torch.randn(2, 4, 8, 16, requires_grad=True)
    out = unet(sample, 5, torch.randn(2, 3, 16))
    assert out.shape == (2, 4, 8, 16)
    out.square().mean().backward()
    assert sample.grad is not None and all(p.grad is not None for p in unet.parameters())


def test_bfloat16_forward_follows_the_input_dtype():
    unet = small_unet(upcast_attention=True)
    sample, timestep, context, _ = make_inputs(unet.config)
    with torch.no_grad():
        expected = unet(sample, timestep, context)
        got = unet.to(torch.bfloat16)(sample.bfloat16(), timestep, context.bfloat16())
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.1 * expected.abs().max()


def test_config_dict_round_trip():
    config = UNetConfig(**CONFIGS["linear_projection"])
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert UNetConfig.from_dict(SD15_CONFIG).cross_attention_dim == 768
    assert UNetConfig(block_out_channels=[32, 64], down_block_types=["DownBlock2D"] * 2,
                      up_block_types=["UpBlock2D"] * 2, mid_block_type=None).block_out_channels == (32, 64)


# ----------------------------------------------------------------------------------------------
# Input errors


def test_error_wrong_channel_count():
    unet = small_unet()
    with pytest.raises(ValueError, match=r"expected \(B, 4, H, W\).*in_channels=4"):
        unet(torch.randn(2, 3, 8, 8), 1, torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match=r"expected \(B, 4, H, W\)"):
        unet(torch.randn(4, 8, 8), 1, torch.randn(2, 3, 16))  # no batch dimension


def test_error_spatial_size_not_divisible():
    unet = small_unet()
    with pytest.raises(ValueError, match=r"divisible by 2\. Resize or pad to 10x8"):
        unet(torch.randn(2, 4, 9, 8), 1, torch.randn(2, 3, 16))


def test_error_non_finite_sample():
    unet = small_unet()
    sample = torch.randn(2, 4, 8, 8)
    sample[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="sample contains 1 non-finite"):
        unet(sample, 1, torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="floating-point"):
        unet(torch.zeros(2, 4, 8, 8, dtype=torch.long), 1, torch.randn(2, 3, 16))


def test_error_encoder_hidden_states():
    unet = small_unet()
    sample = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 12\), expected \(2, L, 16\).*cross_attention_dim=16"):
        unet(sample, 1, torch.randn(2, 3, 12))  # wrong last dimension
    with pytest.raises(ValueError, match=r"shape \(1, 3, 16\), expected \(2, L, 16\): the batch must match"):
        unet(sample, 1, torch.randn(1, 3, 16))  # wrong batch
    with pytest.raises(ValueError, match=r"needs encoder_hidden_states of shape \(B, L, 16\)"):
        unet(sample, 1)  # missing
    with pytest.raises(ValueError, match="no cross-attention blocks.*encoder_hidden_states=None"):
        digits_unet()(torch.randn(2, 1, 16, 16), 1, torch.randn(2, 3, 16), class_labels=1)  # not used


def test_error_class_labels():
    unet = digits_unet()
    sample = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"needs class_labels.*\[0, 10\].*null class"):
        unet(sample, 1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\].*from 3 to 11"):
        unet(sample, 1, class_labels=torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="must be integers"):
        unet(sample, 1, class_labels=torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        unet(sample, 1, class_labels=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="no class embedding.*class_labels=None"):
        small_unet()(torch.randn(2, 4, 8, 8), 1, torch.randn(2, 3, 16), class_labels=torch.tensor([1, 2]))


def test_error_timestep():
    unet = small_unet()
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match=r"timestep must be a single value or have shape \(2,\)"):
        unet(sample, torch.tensor([1, 2, 3]), context)
    with pytest.raises(TypeError, match="timestep must be an int or a tensor"):
        unet(sample, "10", context)
    with pytest.raises(ValueError, match="1-D tensor"):
        timestep_embedding(torch.tensor([[1, 2]]), 8)


def test_value_checks_can_be_switched_off():
    unet = small_unet()
    unet.check_values = False
    sample = torch.full((1, 4, 8, 8), float("nan"))
    assert torch.isnan(unet(sample, 1, torch.randn(1, 3, 16))).all()


def test_error_config():
    with pytest.raises(ValueError, match=r"resnet_time_scale_shift='scale_shift' is not supported"):
        UNetConfig.from_dict(dict(SD15_CONFIG, resnet_time_scale_shift="scale_shift"))
    with pytest.raises(ValueError, match=r"class_embed_type='timestep' is not supported"):
        UNetConfig.from_dict(dict(SD15_CONFIG, class_embed_type="timestep"))
    with pytest.raises(ValueError, match=r"Unknown UNet config key\(s\) \['block_channels'\]"):
        UNetConfig.from_dict(dict(SD15_CONFIG, block_channels=[1]))
    with pytest.raises(ValueError, match="Unknown down block type 'AttnDownBlock2D'"):
        UNetConfig.from_dict(dict(SD15_CONFIG, down_block_types=["AttnDownBlock2D"] + SD15_CONFIG["down_block_types"][1:]))
    with pytest.raises(ValueError, match="Unknown mid_block_type 'UNetMidBlock2DSimpleCrossAttn'"):
        UNetConfig(mid_block_type="UNetMidBlock2DSimpleCrossAttn")
    with pytest.raises(ValueError, match="same length"):
        UNetConfig(block_out_channels=(32, 64))
    with pytest.raises(ValueError, match="norm_num_groups=32 must divide.*48 is not divisible"):
        UNetConfig(block_out_channels=(32, 48, 64, 64))
    with pytest.raises(ValueError, match="cannot be split into 3 attention heads"):
        UNetConfig(block_out_channels=(32, 64, 64, 64), attention_head_dim=3)
    with pytest.raises(ValueError, match="layers_per_block must be a positive integer or a tuple of 4"):
        UNetConfig(layers_per_block=(1, 2))
    with pytest.raises(ValueError, match="num_class_embeds must be a positive integer, got 0. For classifier-free guidance"):
        UNetConfig(num_class_embeds=0)
    with pytest.raises(TypeError, match=r"UNetConfig.from_dict"):
        UNet2DConditionModel(SD15_CONFIG)
