"""The ``torchrun`` process group: joined once by whichever stage needs it first, left at exit.

Collection and training both run one process per GPU (or per CPU share) under ``torchrun``.
Each needs the group: collection so rank 0 writes the store's index only after every rank
wrote its shards, training for DDP. Whichever runs first joins it; the other finds it joined.

A process must not abort after its work is done. With gloo, a finished collective is released
by one of gloo's worker threads, which frees the reduced tensor's Python object and so must
take the GIL. If the script ends right after its last collective (DDP's last backward, a
metric's all-reduce), that thread asks for the GIL while Python is already shutting down, is
killed inside a C++ destructor, and the process aborts ("terminate called without an active
exception", SIGABRT), which ``torchrun`` reports as a failed run. Measured on 2 CPU cores: 17
of 30 two-rank runs of a bare all-reduce loop, 8 of 30 of a short DDP loop. So the group this
module joined is left at exit after a short pause that hands those threads the GIL (0 of 60
aborted with it).
"""

from __future__ import annotations

import atexit
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from mneme_core.common.errors import RunError

# How long a rank waits for the others at a collective before the group gives up. Long,
# because collection ends in a barrier: a resumed rank whose shards are all on disk already
# waits there for ranks that may still have hours of contexts to run.
_GROUP_TIMEOUT = timedelta(hours=24)

# long enough for a worker thread between "collective finished" and "released" (microseconds
# of work, plus a descheduling on a loaded machine) to take the GIL and finish
_RELEASE_PAUSE_S = 0.05


def launched_world_size() -> int:
    """How many processes ``torchrun`` started (1 outside it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 under torchrun, and every process outside it: the one that writes and reports.
    Read from torchrun's environment, so it holds before the group is joined."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_every_rank() -> None:
    """A barrier when this process joined torchrun's group, else nothing. After a stage that
    every rank runs, so that no rank starts the next one before rank 0 has written what it
    reads (collection's index is written by rank 0 after the other ranks finished)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_every_rank(flag: bool) -> bool:
    """``flag`` where it holds on every process of the group this process joined (a
    decision all ranks must take alike); as it is in one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    flags: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, flag)
    return all(bool(f) for f in flags)


def _local_cuda_device() -> torch.device:
    """This process's GPU: ``LOCAL_RANK`` under ``torchrun``, else the current one."""
    if launched_world_size() <= 1:
        return torch.device("cuda", torch.cuda.current_device())
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise RunError(
            f"torchrun started local rank {local} but torch sees {torch.cuda.device_count()} GPU(s) here: "
            "start one process per visible GPU (--nproc_per_node), or set models.device to cpu"
        )
    return torch.device("cuda", local)


def join_process_group(device: torch.device) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` of this process, joining ``torchrun``'s group if not yet
    joined.

    ``device`` is where this rank computes (``collect.models.resolve_device``): NCCL for a
    GPU, gloo for the CPU. A bare ``"cuda"`` becomes this rank's GPU (``LOCAL_RANK``, or the
    current one outside torchrun), which is returned and made the current device, so the
    models a stage then loads onto ``"cuda"`` land on it too.
    """
    world = launched_world_size()
    if device.type == "cuda":
        own = _local_cuda_device()
        if world > 1 and device.index is not None and device.index != own.index:
            raise RunError(
                f"models.device names one GPU ({device}) but torchrun started {world} processes, and this "
                f"one's GPU is {own}: set models.device to cuda or auto, so that each rank takes its own"
            )
        device = device if device.index is not None else own
        torch.cuda.set_device(device)
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=_GROUP_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
        atexit.register(_leave_process_group)
    return dist.get_rank(), world, device


def _leave_process_group() -> None:
    time.sleep(_RELEASE_PAUSE_S)  # releases the GIL: see the module docstring
    if dist.is_initialized():
        dist.destroy_process_group()
