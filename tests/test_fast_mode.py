"""The fast mode of lesson 10 on a CPU: fused attention projections and StableDiffusion.optimize().

Each technique must leave the arithmetic alone (outputs equal to float rounding) and the weights'
names alone (checkpoints still load). torch.compile is exercised with its "eager" backend, which
traces the UNet and the VAE decoder whole (``fullgraph=True``: a graph break is an error) in
seconds; inductor's code generation, minutes on this CPU, is left to the GPU benchmark
(benchmarks/sd15_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from _minisd import IMAGE_SIZE, make_mini_sd
from course_lib.nn.attention import Attention, fuse_projections
from course_lib.nn.unet import UNet2DConditionModel
from course_lib.pipeline import TINY_ARCHITECTURE, StableDiffusion
from _tiny_vae import tiny_vae


@pytest.mark.parametrize("cross, bias", [(None, False), (24, False), (None, True)])
def test_fused_projections_give_the_same_attention(cross, bias):
    torch.manual_seed(0)
    layer = Attention(32, cross, heads=4, dim_head=8, bias=bias).eval()
    x, context = torch.randn(2, 10, 32), (torch.randn(2, 7, 24) if cross else None)
    keys = set(layer.state_dict())
    before = layer(x, context)
    layer.fuse_projections()
    rows = 3 * 32 if cross is None else 2 * 32
    assert layer.fused_weight.shape == (rows, 32 if cross is None else 24)
    assert (layer.fused_bias is not None) == bias
    after = layer(x, context)
    assert set(layer.state_dict()) == keys  # the fused copy is not saved: checkpoints keep diffusers' keys
    assert torch.allclose(after, before, atol=1e-6), (after - before).abs().max()
    layer.unfuse_projections()
    assert layer.fused_weight is None and torch.equal(layer(x, context), before)


def test_fused_projections_in_an_sd15_shaped_unet_and_a_vae():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(TINY_ARCHITECTURE["unet"]).eval()  # SD v1.5's layout, narrow
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=c)
        # 2 self- and 2 cross-attention layers per transformer block: 3 down levels x 2 + 1 mid + 3 up x 3
        assert fuse_projections(unet) == 2 * (3 * 2 + 1 + 3 * 3)
        after = unet(x, t, encoder_hidden_states=c)
    assert torch.allclose(after, before, atol=1e-5), (after - before).abs().max()

    vae = tiny_vae()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode(image).mean
        before = vae.decode(z)
        assert fuse_projections(vae) >= 1
        after = vae.decode(z)
    assert torch.allclose(after, before, atol=1e-5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_mini_sd(tmp_path_factory.mktemp("mini-sd"))


def _images(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(["a red circle", "a blue square"], num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                output_type="np", **kwargs)


@pytest.mark.slow
def test_optimize_on_a_cpu_keeps_the_images_and_the_weights(folder):
    eager = StableDiffusion.from_course("mini-sd", directory=folder)
    reference = _images(eager)
    fast = StableDiffusion.from_course("mini-sd", directory=folder)
    keys = set(fast.unet.state_dict())
    assert fast.optimize() is fast
    # on a CPU "auto" changes neither dtype nor compiles
    assert fast.fast == {"dtype": "torch.float32", "channels_last": True, "fuse_projections": True,
                         "compile": False, "compile_mode": None, "compile_vae": False}
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.unet.check_values is False and set(fast.unet.state_dict()) == keys
    images = _images(fast)
    assert images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert abs(images - reference).max() < 1e-5
    # a guidance sweep works in the fast mode too
    sweep = fast("a red circle", guidance_scale=[1, 7.5], num_inference_steps=3, output_type="np",
                 generator=torch.Generator().manual_seed(1))
    assert sweep.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)


@pytest.mark.slow
def test_optimize_compiles_the_unet_and_decoder_whole(folder):
    """fullgraph=True: any graph break in the UNet or the decoder would raise here."""
    torch._dynamo.reset()
    reference = _images(StableDiffusion.from_course("mini-sd", directory=folder))
    fast = StableDiffusion.from_course("mini-sd", directory=folder).optimize(
        compile=True, compile_mode=None, compile_options={"backend": "eager"})
    assert fast.fast["compile"] and fast.fast["compile_vae"]
    images = _images(fast)
    assert abs(images - reference).max() < 1e-5
    assert fast.unet._compiled_call_impl is not None and fast.vae.decoder._compiled_call_impl is not None
    torch._dynamo.reset()


def test_optimize_bad_dtype_says_what_to_do(folder):
    pipe = StableDiffusion.from_course("mini-sd", directory=folder)
    with pytest.raises(TypeError, match="floating-point dtype"):
        pipe.optimize(dtype=torch.int8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by benchmarks/gpu_session.sh)")
def test_optimize_on_cuda_float16_is_close_to_float32_on_the_cpu(folder):
    reference = _images(StableDiffusion.from_course("mini-sd", directory=folder))
    fast = StableDiffusion.from_course("mini-sd", directory=folder, device="cuda").optimize(compile=False)
    assert fast.fast["dtype"] == "torch.float16"
    images = _images(fast)
    assert abs(images - reference).max() < 0.05
