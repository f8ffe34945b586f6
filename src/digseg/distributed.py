"""Running over several processes (`accelerate launch`, `torchrun`), in the process group accelerate sets up: who
am I, my share (process r of N takes items r, r+N, ...), and reductions; in a single process all of it does nothing."""

from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

T = TypeVar("T")


def launched_without_accelerator() -> bool:
    """True when a launcher started several processes on a machine with no GPU: accelerate picks its CPU backend
    (gloo) only when told (`cpu=True`), which the launchers do not do, and the processes would each train alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    xpu = getattr(torch, "xpu", None)
    return not (torch.cuda.is_available() or (xpu is not None and xpu.is_available()))


def _state():
    return PartialState(cpu=launched_without_accelerator())


def process_info() -> tuple[int, int]:
    """-> (process index, number of processes); (0, 1) when not launched distributed."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not initialized and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
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
    return gather_object(values)


def wait_for_everyone() -> None:
    if process_info()[1] > 1:
        _state().wait_for_everyone()


def shutdown(wait: bool = True) -> None:
    """Wait for the other processes (when `wait`), then destroy the process group, if there is one: else gloo's
    threads can outlive the interpreter, which then aborts (SIGABRT) after its work is done."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
