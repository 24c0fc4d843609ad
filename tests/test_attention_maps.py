"""Tests of course_lib.nn.attention's attention_probs and record_cross_attention (lesson 07).

The recorded weights must be exactly the softmax(Q K^T / sqrt(d)) that the layers used (checked
against torch's own scaled_dot_product_attention), recording must not change the model's output
or its gradients, and the maps must land on the right grid.
"""

import pytest
import torch
import torch.nn.functional as F

from course_lib.nn.attention import Attention, CrossAttentionMaps, attention_probs, record_cross_attention
from course_lib.nn.unet import UNet2DConditionModel, UNetConfig

TINY = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
    attention_head_dim=4,
)
ATTN2 = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2",
         "mid_block.attentions.0.transformer_blocks.0.attn2",
         "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
         "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]


def tiny_unet(**overrides) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(UNetConfig(**dict(TINY, **overrides))).eval()


def inputs(batch_size=2, tokens=5, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch_size, 4, size, size, generator=g), torch.tensor([10, 700][:batch_size]),
            torch.randn(batch_size, tokens, 16, generator=g))


@pytest.mark.slow
def test_attention_probs_are_what_sdpa_multiplies_with_v():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 6, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    probs = attention_probs(q, k)
    assert probs.shape == (2, 3, 6, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 6))
    # SDPA with V = the identity returns its attention weights themselves
    identity = torch.eye(5).expand(2, 3, 5, 5)
    torch.testing.assert_close(probs, F.scaled_dot_product_attention(q, k, identity), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_recording_keeps_the_output_and_records_every_cross_attention_layer():
    unet = tiny_unet()
    sample, t, context = inputs()
    with torch.no_grad():
        plain = unet(sample, t, encoder_hidden_states=context)
        with record_cross_attention(unet) as maps:
            watched = unet(sample, t, encoder_hidden_states=context)
    assert torch.equal(plain, watched)
    assert isinstance(maps, CrossAttentionMaps)
    assert maps.layer_names == ATTN2
    assert [tuple(maps.layer_map(name).shape) for name in ATTN2] == [(2, 64, 5), (2, 16, 5), (2, 64, 5), (2, 64, 5)]
    for name in ATTN2:
        torch.testing.assert_close(maps.layer_map(name).sum(-1), torch.ones(2, maps.layer_map(name).shape[1]))
    # hooks are gone after the block
    assert all(not module._forward_hooks for module in unet.modules())


@pytest.mark.slow
def test_recorded_weights_are_the_layers_own():
    unet = tiny_unet()
    sample, t, context = inputs()
    layer = unet.get_submodule(ATTN2[0])
    seen = {}
    handle = layer.register_forward_hook(lambda module, args, output: seen.update(x=args[0], context=args[1]))
    with torch.no_grad(), record_cross_attention(unet) as maps:
        unet(sample, t, encoder_hidden_states=context)
    handle.remove()
    B, h = 2, layer.heads
    q = layer.to_q(seen["x"]).view(B, -1, h, 8).transpose(1, 2)  # 32 channels / 4 heads = 8
    k = layer.to_k(seen["context"]).view(B, -1, h, 8).transpose(1, 2)
    identity = torch.eye(5).expand(B, h, 5, 5)
    expected = F.scaled_dot_product_attention(q, k, identity).mean(dim=1)  # (B, N, L), mean over heads
    torch.testing.assert_close(maps.layer_map(ATTN2[0]), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_calls_are_averaged_and_token_maps_land_on_the_grid():
    unet = tiny_unet()
    sample, t, context = inputs()
    with torch.no_grad(), record_cross_attention(unet) as once:
        unet(sample, t, encoder_hidden_states=context)
    with torch.no_grad(), record_cross_attention(unet) as twice:
        unet(sample, t, encoder_hidden_states=context)
        unet(sample, t, encoder_hidden_states=context)
    assert twice.calls[ATTN2[0]] == 2
    torch.testing.assert_close(twice.layer_map(ATTN2[0]), once.layer_map(ATTN2[0]))
    # one full-resolution layer: the map is its column of the token, laid out row by row
    first = once.token_map(2, latent_size=(8, 8), layers=[ATTN2[0]])
    assert first.shape == (2, 8, 8)
    torch.testing.assert_close(first, once.layer_map(ATTN2[0])[:, :, 2].reshape(2, 8, 8))
    # all layers, upsampled to the picture: shares of attention, so within [0, 1]
    picture = once.token_map(-1, latent_size=(8, 8), size=(64, 64))
    assert picture.shape == (2, 64, 64) and picture.min() >= 0 and picture.max() <= 1
    # the maps of all tokens add up to 1 at every position (each layer's weights do)
    total = sum(once.token_map(i, latent_size=(8, 8)) for i in range(5))
    torch.testing.assert_close(total, torch.ones(2, 8, 8))


def test_a_non_square_latent():
    unet = tiny_unet()
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 4, 8, 16, generator=g)
    with torch.no_grad(), record_cross_attention(unet) as maps:
        unet(sample, torch.tensor([5]), encoder_hidden_states=torch.randn(1, 3, 16, generator=g))
    assert maps.token_map(0, latent_size=(8, 16)).shape == (1, 8, 16)
    with pytest.raises(ValueError, match="no h / 2\\^k x w / 2\\^k grid"):
        maps.token_map(0, latent_size=(8, 8))


def test_gradients_flow_while_recording():
    unet = tiny_unet()
    unet.train()
    sample, t, context = inputs()
    with record_cross_attention(unet) as maps:
        loss = unet(sample, t, encoder_hidden_states=context).square().mean()
    loss.backward()
    assert unet.get_submodule(ATTN2[0]).to_q.weight.grad is not None
    assert not maps.sums[ATTN2[0]].requires_grad


def test_hooks_are_removed_after_an_error_and_errors_say_what_to_do():
    unet = tiny_unet()
    sample, t, context = inputs()
    with pytest.raises(RuntimeError, match="boom"):
        with record_cross_attention(unet):
            raise RuntimeError("boom")
    assert all(not module._forward_hooks for module in unet.modules())
    with pytest.raises(ValueError, match="no cross-attention layers"):
        with record_cross_attention(torch.nn.Sequential(Attention(8, None, heads=2, dim_head=4))):
            pass
    with pytest.raises(ValueError, match="Nothing was recorded"):
        CrossAttentionMaps().token_map(0, latent_size=(8, 8))
    with torch.no_grad(), record_cross_attention(unet) as maps:
        unet(sample, t, encoder_hidden_states=context)
        with pytest.raises(ValueError, match="the batch or the image size changed"):
            unet(sample[:1], t[:1], encoder_hidden_states=context[:1])
    with pytest.raises(IndexError, match="outside the prompt's 5 tokens"):
        maps.token_map(5, latent_size=(8, 8))
    with pytest.raises(KeyError, match="No cross-attention layer"):
        maps.layer_map("mid_block")
