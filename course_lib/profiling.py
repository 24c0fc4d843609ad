"""What running a network costs: parameters, FLOPs, kernel launches, activation memory, time.

Lesson 06 asks why Stable Diffusion works on latents (the same UNet on 64x64x4 latents instead of
512x512x3 pixels), lesson 10 where the time of a sampling run goes. Both are answered by counting,
not by guessing:

    count_parameters        how many numbers a network holds
    count_flops             floating-point operations of one call (torch.utils.flop_counter)
    count_kernels           the tensor operations one call dispatches (one GPU kernel launch each)
    saved_activation_bytes  the memory autograd keeps from a forward pass for the backward pass
    forward_cost            FLOPs, time and activation memory of one forward pass together
    Timer, time_call        wall time of a block of code or the fastest of a few calls

Everything here reads shapes or clocks, never the values, so it works on any network; FLOPs and
kernels also on the meta device (no memory, no weights: SD v1.5's UNet is counted in a second).
The quality of what a network makes is measured elsewhere (``course_lib.metrics``).
"""

from __future__ import annotations

import contextlib
import time
from typing import NamedTuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .checks import check_int_range

__all__ = [
    "count_parameters",
    "count_flops",
    "count_kernels",
    "saved_activation_bytes",
    "ForwardCost",
    "forward_cost",
    "Timer",
    "time_call",
]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with requires_grad when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------- time
class Timer:
    """Wall time of a block: ``with Timer() as timer: ...`` then ``timer.seconds``.

    :param device: where the work runs; on a CUDA device the GPU is waited for at the start and
        the end (its kernels run after the host has issued them), elsewhere nothing is waited for
    """

    def __init__(self, device: torch.device | str | None = None):
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.seconds: float | None = None

    def __enter__(self) -> "Timer":
        if self.cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._start


def time_call(fn, *args, repeats: int = 1, warmup: int = 0, device: torch.device | str | None = None,
              **kwargs) -> float:
    """The fastest of ``repeats`` timed calls ``fn(*args, **kwargs)``, after ``warmup`` untimed ones.

    The minimum, not the mean: other programs can only make a call slower, never faster.

    :param device: the device the work runs on (see :class:`Timer`)
    :return: seconds
    """
    check_int_range(repeats, "repeats", 1)
    check_int_range(warmup, "warmup", 0)
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        with Timer(device) as timer:
            fn(*args, **kwargs)
        times.append(timer.seconds)
    return min(times)


# ---------------------------------------------------------------------------------------------- FLOPs
def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(Q K^T / sqrt(d)) V: two batched products, 2 * 2 * B * h * L_q * L_k * d."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_formulas_not_in_torch() -> dict:
    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def _flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_flop_formulas_not_in_torch())


def count_flops(fn, *args, **kwargs) -> int:
    """Floating-point operations of ``fn(*args, **kwargs)``, counted by torch.utils.flop_counter.

    FlopCounterMode counts the matrix products and convolutions (2 per multiply-add), which are
    almost all of a network's arithmetic; normalisations, activations and additions are left out.
    It reads only shapes, so tensors on the meta device (no memory, no values) work too. On the
    CPU, ``F.scaled_dot_product_attention`` runs a fused kernel that FlopCounterMode does not know:
    it is counted here with the same formula as the GPU kernels (on the meta device attention
    decomposes into two ``bmm``, which count the same).

    :param fn: any callable, e.g. a network or ``vae.decode``; run once, without gradients
    :return: the number of FLOPs (int)
    """
    counter = _flop_counter()
    with counter, torch.no_grad():
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- kernels
# ATen operations that only describe memory (a view, an alias), launching no kernel
_METADATA_ONLY = {"_unsafe_view", "detach", "alias", "lift_fresh", "_reshape_alias", "unsqueeze_", "squeeze_"}


def count_kernels(fn, *args, **kwargs) -> dict[str, int]:
    """The tensor operations that ``fn(*args, **kwargs)`` dispatches, as a GPU would launch them.

    Each ATen operation that computes something (a convolution, a matrix product, an addition, a
    GroupNorm, a copy) is one kernel launch on a GPU in eager mode, issued by the host one after
    the other; views (``view``, ``transpose``, ``expand``, ...) only change a tensor's shape and
    launch nothing, so they are left out. Works on the meta device (shapes only, no memory).

    :param fn: any callable, e.g. a UNet; run once, without gradients
    :return: operation name -> count, largest first (``sum(counts.values())`` is the launches)
    """
    counts: dict[str, int] = {}

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not func.is_view and name not in _METADATA_ONLY:
                counts[name] = counts.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    with Counter(), torch.no_grad():
        fn(*args, **kwargs)
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


# ---------------------------------------------------------------------------------------------- memory
def saved_activation_bytes(model: nn.Module, *args, **kwargs) -> int:
    """Bytes of the activations that autograd keeps from one forward pass, for the backward pass.

    This is what training needs in memory besides the weights, their gradients and the optimizer's
    state, and it grows with the batch and with the number of positions H x W. Measured with
    ``torch.autograd.graph.saved_tensors_hooks`` while the model's parameters require gradients
    (their state is restored afterwards); the parameters themselves are not counted, and a tensor
    saved by several operations counts once.

    :param model: the network; called as ``model(*args, **kwargs)``, with gradients
    :return: bytes (int); 0 when nothing needs a gradient
    """
    return _forward_with_gradients(model, args, kwargs)


def _forward_with_gradients(model: nn.Module, args: tuple, kwargs: dict, counter=None) -> int:
    """One forward pass with gradients: the bytes autograd saves (and the FLOPs, into ``counter``)."""
    weights = {t.untyped_storage()._cdata for t in list(model.parameters()) + list(model.buffers())}
    saved: dict[int, int] = {}  # storage address -> bytes
    alive = []  # hold the saved tensors until counted, so that no storage address is reused meanwhile

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
            alive.append(tensor)
        return tensor

    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(p.is_floating_point())
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                (counter if counter is not None else contextlib.nullcontext()):
            output = model(*args, **kwargs)
        del output  # frees the graph and what it saved
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    alive.clear()
    return int(sum(saved.values()))


# ---------------------------------------------------------------------------------------------- all three
class ForwardCost(NamedTuple):
    """What one forward pass of a network costs (see :func:`forward_cost`)."""

    flops: int  # floating-point operations of the matrix products and convolutions (a multiply-add is 2)
    seconds: float | None  # wall time of one forward without gradients; None on the meta device
    activation_bytes: int | None  # bytes of the tensors autograd keeps for backward; None on the meta device


def forward_cost(model: nn.Module, *args, repeats: int = 1, **kwargs) -> ForwardCost:
    """FLOPs, time and training activation memory of one forward pass ``model(*args, **kwargs)``.

    A first pass with gradients counts the FLOPs (:func:`count_flops`) and the saved activations
    (:func:`saved_activation_bytes`) and warms up; then ``repeats`` passes without gradients are
    timed and the fastest is reported. On the meta device (a network built under
    ``torch.device("meta")``, no weights in memory) only the FLOPs are counted.

    :param model: the network (an ``nn.Module``)
    :param repeats: timed forward passes
    :return: a :class:`ForwardCost` (flops, seconds, activation_bytes)
    """
    check_int_range(repeats, "repeats", 1)
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type == "meta":
        return ForwardCost(count_flops(model, *args, **kwargs), None, None)
    counter = _flop_counter()
    activation_bytes = _forward_with_gradients(model, args, kwargs, counter)
    with torch.no_grad():
        seconds = time_call(model, *args, repeats=repeats, device=parameter.device if parameter is not None else None,
                            **kwargs)
    return ForwardCost(int(counter.get_total_flops()), seconds, activation_bytes)
