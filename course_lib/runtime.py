"""Where and how a training run executes: the device, per-step random generators, several processes, Ctrl-C.

* :func:`resolve_device` turns "auto", "cpu", "cuda", "mps" into a device that exists here.
* :func:`step_generators` seeds the generators of training step k from (seed, k) alone, so that a
  run resumed at step k draws exactly what an uninterrupted one draws.
* :func:`distributed_setup` joins the run of several processes that torchrun started (gloo on
  CPUs, NCCL on CUDA GPUs); :class:`Processes` is this process's place in it.
* :func:`deferred_interrupt` turns Ctrl-C into a request the loop answers between two steps.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["resolve_device", "seed_for", "step_generators", "process_generator", "Processes",
           "distributed_setup", "deferred_interrupt"]


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA if present, else MPS if present, else CPU; check that a named device exists."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}.")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {name!r}. Expected 'auto', 'cpu', 'cuda' (or 'cuda:N') or 'mps'.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} asked for, but CUDA is not available here (torch {torch.__version__}). "
            f"Use device 'cpu' (or 'auto', which picks the best device present)."
        )
    if name == "mps" and not _mps_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here. Use device 'cpu' or 'auto'.")
    return torch.device(name)


def seed_for(*numbers: int) -> int:
    """A 64-bit seed that depends on all of ``numbers`` (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, dtype=np.uint64)[0])


def step_generators(seed: int, step: int, device: torch.device | str = "cpu") -> tuple[torch.Generator, torch.Generator]:
    """The two generators of training step ``step``, seeded by (seed, step) alone.

    :return: (index_generator on the CPU: which examples form the batch,
              generator on ``device``: everything the loss draws -- t, eps, label dropout)
    """
    index_generator = torch.Generator().manual_seed(seed_for(seed, step, 0))
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed_for(seed, step, 1))
    return index_generator, generator


def process_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The loss's generator of process ``rank`` at step ``step`` of a run of several: seeded by (seed, step, rank)."""
    return torch.Generator(device=device).manual_seed(seed_for(seed, step, 1, rank))


@dataclass(frozen=True)
class Processes:
    """This process's place in a run of several processes (torchrun); a plain run is rank 0 of 1."""

    rank: int = 0  # 0 .. world_size - 1; rank 0 logs, evaluates and writes the checkpoints
    world_size: int = 1

    def barrier(self) -> None:
        """Wait until every process has reached this line (a no-op for one process)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def mean_and_any(self, loss: torch.Tensor, flag: bool) -> tuple[float, bool]:
        """The loss averaged over the processes, and whether ``flag`` is set in any of them (one all_reduce)."""
        values = torch.tensor([loss.item(), float(flag)], dtype=torch.float64, device=loss.device)
        torch.distributed.all_reduce(values)  # the sum over the processes, the same on every one
        return values[0].item() / self.world_size, values[1].item() > 0


def distributed_setup(device: torch.device) -> tuple[Processes, torch.device]:
    """Join the run of several processes that torchrun started, if any.

    torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment of
    each process it starts. With WORLD_SIZE > 1, start the process group (gloo on the CPU, NCCL on
    CUDA GPUs, process r on GPU LOCAL_RANK), unless it is started already (by the caller, or by an
    earlier call of train() in this process). It is ended when the process exits, not at the end of
    train(): torchrun's processes cannot start a second group after destroying the first (the
    second start waits forever).

    :return: (this process's place in the run, the device it trains on)
    """
    distributed = torch.distributed
    started = distributed.is_available() and distributed.is_initialized()
    world_size = distributed.get_world_size() if started else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(), device
    if not distributed.is_available():
        raise ValueError(f"WORLD_SIZE is {world_size} (several processes, as torchrun starts them), but this torch "
                         f"{torch.__version__} has no torch.distributed. Run a single process with plain python.")
    if device.type == "mps":
        raise ValueError("Training with several processes needs CPUs (gloo) or CUDA GPUs (NCCL), not MPS. "
                         "Run a single process on MPS, or use --device cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process
    if not started:
        # init_process_group reads the torchrun variables
        if device.type == "cuda":
            torch.cuda.set_device(device)
            distributed.init_process_group("nccl", device_id=device)
        else:
            distributed.init_process_group("gloo")
        atexit.register(distributed.destroy_process_group)
    return Processes(distributed.get_rank(), world_size), device


@contextlib.contextmanager
def deferred_interrupt():
    """Turn Ctrl-C (SIGINT) into a request that the loop answers at the end of the current step.

    A KeyboardInterrupt raised in the middle of ``optimizer.step()`` could leave some weights
    updated and others not; the flag lets the step finish, then the loop saves and stops. A
    second Ctrl-C raises KeyboardInterrupt at once (a save it cuts short leaves the checkpoint
    before it: checkpoints.py). Only possible in the main thread; elsewhere Ctrl-C raises
    KeyboardInterrupt as usual.

    :return: (as the context's value) a dict whose "requested" entry turns True on the first Ctrl-C
    """
    flag = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag["requested"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag["requested"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
