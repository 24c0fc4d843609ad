"""Tests of course_lib.profiling (lessons 06 and 10): parameters, FLOPs, kernels, activation memory, time.

FLOPs are checked against the textbook counts of a linear layer, a convolution and attention, and
the CPU count (where attention runs a fused kernel) against the meta-device count (where it
decomposes into two bmm). Activation memory is checked as a property: it scales with the batch,
ignores the weights, and leaves the model's requires_grad flags as they were.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.nn import UNet2DConditionModel, UNetConfig
from course_lib.profiling import (ForwardCost, Timer, count_flops, count_kernels, count_parameters, forward_cost,
                                  saved_activation_bytes, time_call)

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, norm_num_groups=8,
                 cross_attention_dim=12, attention_head_dim=2)


def tiny_unet(device="cpu"):
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(UNetConfig(**TINY_UNET)).eval()
    unet.check_values = device != "meta"  # value checks cannot read meta tensors
    return unet


def unet_inputs(batch=2, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, generator=g).to(device)
    context = torch.randn(batch, 5, 12, generator=g).to(device)
    return x, torch.full((batch,), 500, device=device), context


def test_linear_and_conv_flops_are_the_textbook_counts():
    linear = nn.Linear(10, 20)
    assert count_flops(linear, torch.randn(3, 10)) == 2 * 3 * 10 * 20  # 2 per multiply-add
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, torch.randn(1, 3, 16, 16)) == 2 * (16 * 16 * 8) * (3 * 3 * 3)


def test_attention_is_counted_on_the_cpu():
    """F.scaled_dot_product_attention on the CPU: Q K^T and (softmax) V, 2 * B h L_q L_k d each."""
    B, h, Lq, Lk, d = 2, 3, 10, 7, 4
    q, k, v = torch.randn(B, h, Lq, d), torch.randn(B, h, Lk, d), torch.randn(B, h, Lk, d)
    assert count_flops(F.scaled_dot_product_attention, q, k, v) == 2 * (2 * B * h * Lq * Lk * d)


def test_cpu_and_meta_counts_agree_for_a_unet():
    cpu = count_flops(tiny_unet(), *unet_inputs())
    meta = count_flops(tiny_unet("meta"), *unet_inputs(device="meta"))
    assert cpu == meta > 0


def test_forward_cost_on_the_meta_device_counts_flops_only():
    cost = forward_cost(tiny_unet("meta"), *unet_inputs(device="meta"))
    assert isinstance(cost, ForwardCost)
    assert cost.seconds is None and cost.activation_bytes is None
    assert cost.flops == count_flops(tiny_unet(), *unet_inputs())


def test_forward_cost_on_the_cpu():
    unet = tiny_unet()
    cost = forward_cost(unet, *unet_inputs(), repeats=2)
    assert cost.flops == count_flops(unet, *unet_inputs())
    assert cost.seconds > 0
    assert cost.activation_bytes == saved_activation_bytes(unet, *unet_inputs())


def test_activation_bytes_scale_with_the_batch_and_leave_weights_out():
    unet = tiny_unet()
    one, two = (saved_activation_bytes(unet, *unet_inputs(batch)) for batch in (2, 4))
    assert two == 2 * one > 0
    # a network saves its input and the outputs it needs for backward, never its weights
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU())
    x = torch.randn(3, 10)
    saved = saved_activation_bytes(net, x)
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    assert 0 < saved < weight_bytes
    assert saved == 3 * 10 * 4 + 3 * 20 * 4  # the input of the Linear, the output of the ReLU (float32)


def test_activation_bytes_restore_requires_grad():
    unet = tiny_unet().requires_grad_(False)
    unet.conv_in.weight.requires_grad_(True)
    assert saved_activation_bytes(unet, *unet_inputs()) > 0
    assert [p.requires_grad for p in unet.parameters()].count(True) == 1 and unet.conv_in.weight.requires_grad


def test_repeats_must_be_positive():
    with pytest.raises(ValueError, match="repeats"):
        forward_cost(nn.Linear(2, 2), torch.randn(1, 2), repeats=0)


def test_count_kernels_counts_what_computes_and_skips_views():

    linear, conv = torch.nn.Linear(3, 4), torch.nn.Conv2d(3, 8, 3)
    assert count_kernels(linear, torch.zeros(2, 3)) == {"addmm": 1}
    assert count_kernels(lambda x: x.view(6).t().reshape(2, 3).transpose(0, 1), torch.zeros(2, 3)) == {}
    counts = count_kernels(lambda x: torch.relu(conv(x)) + 1, torch.zeros(1, 3, 8, 8))
    assert counts == {"convolution": 1, "relu": 1, "add": 1}
    # on the meta device too (shapes only)
    with torch.device("meta"):
        big = torch.nn.Linear(4096, 4096)
    assert count_kernels(big, torch.zeros(8, 4096, device="meta")) == {"addmm": 1}


def test_count_parameters():
    unet = tiny_unet()
    assert count_parameters(unet) == sum(p.numel() for p in unet.parameters())
    unet.conv_in.requires_grad_(False)
    frozen = unet.conv_in.weight.numel() + unet.conv_in.bias.numel()
    assert count_parameters(unet, trainable_only=True) == count_parameters(unet) - frozen
    assert count_parameters(nn.Linear(3, 4)) == 3 * 4 + 4


def test_timer_and_time_call_measure_wall_time(monkeypatch):
    """Read from a fake clock: the Timer's seconds are end - start; time_call keeps the fastest call."""
    ticks = iter([10.0, 10.5, 20.0, 20.2, 30.0, 30.3])
    monkeypatch.setattr("course_lib.profiling.time.perf_counter", lambda: next(ticks))
    with Timer() as timer:
        pass
    assert timer.seconds == pytest.approx(0.5)
    calls = []
    assert time_call(calls.append, "x", repeats=2, warmup=1) == pytest.approx(0.2)
    assert calls == ["x"] * 3  # one warm-up, two timed


def test_time_call_refuses_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)
