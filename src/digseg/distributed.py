"""Running over several processes (`accelerate launch`, `torchrun`): who am I, my share, and reductions.

Everything here also works in a plain single process, where it does nothing: the rank is 0, the share is
everything, and a reduction returns its input. The process group is the one accelerate sets up (NCCL on GPUs,
gloo on CPUs) from the launcher's environment variables.

Evaluation splits a dataset by striding: process r of N takes samples r, r+N, r+2N, ... Every per-sample
random draw is seeded by the sample's index, not by the order a process meets it, so the predictions, and the
metrics reduced from them, are the same for any N.
"""

from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

import torch

T = TypeVar("T")


def launched_without_accelerator() -> bool:
    """True when a launcher started several processes on a machine with no GPU: they must use gloo on CPU.

    accelerate only picks its CPU backend when told (`cpu=True`); torchrun and accelerate's multi-process
    launcher do not tell it, so without this the processes would each train alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available()))


def _state():
    from accelerate import PartialState

    return PartialState(cpu=launched_without_accelerator())


def process_info() -> tuple[int, int]:
    """-> (process index, number of processes); (0, 1) when not launched distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
    state = _state()
    return state.process_index, state.num_processes


def is_main_process() -> bool:
    return process_info()[0] == 0


def shard(items: Sequence[T]) -> list[tuple[int, T]]:
    """This process's share of `items` as (global index, item) pairs: indices rank, rank+N, rank+2N, ..."""
    rank, world = process_info()
    return [(i, items[i]) for i in range(rank, len(items), world)]


def sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over all processes (a copy; exact for integer tensors)."""
    if process_info()[1] == 1:
        return tensor.clone()
    out = tensor.clone().to(_state().device)
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out.to(tensor.device)


def gather_objects(values: list[Any]) -> list[Any]:
    """The concatenation of every process's `values` (picklable, our own in-memory objects), on all processes."""
    if process_info()[1] == 1:
        return list(values)
    from accelerate.utils import gather_object

    return gather_object(values)


def wait_for_everyone() -> None:
    if process_info()[1] > 1:
        _state().wait_for_everyone()


def shutdown(wait: bool = True) -> None:
    """End this process's part in the process group, if there is one: wait for the others (when `wait`), then
    destroy it. Without this, gloo's threads can still be running at interpreter exit, and the process then
    aborts ("terminate called without an active exception", SIGABRT) after its work is done."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if wait:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
