"""Training checkpoints: safetensors for every tensor, JSON for the rest, written atomically; nothing is unpickled.

Layout: `<output_dir>/checkpoints/step-00000100/` with
  unet.safetensors, text_pathway.safetensors    trainable weights
  optimizer.safetensors                         optimizer moments, flattened (`optimizer_to_flat`)
  ema.safetensors                               EMA shadow weights (when EMA is on)
  trainer_state.json                            step, param groups, LR schedule, EMA scalars, and what a resume is
                                                checked against (config, launch facts, config_changes: resume_check.py)
A sharded run's checkpoint holds instead of the four safetensors files `shards/`, one file per process
(sharding.py), written into the same temporary folder (`staging_folder`) that the main process then completes.
`checkpoints/best/` (training/validation.py) holds the best validated step the same way, plus best.json; it is
never pruned, and `latest` never picks it.

Every file is written into a `.tmp-*` folder, fsync'ed, and the folder renamed into place, so a `step-*` folder is
always complete; a `.tmp-*` folder left by a kill is never read and is removed by the next save. A failed write
(disk full, permission lost) removes its `.tmp-*` folder and raises a one-line `DigsegError`.

Fault injection for tests (`kill_point`): `DIGSEG_KILL_AT=<point>` SIGKILLs the process at that point, e.g.
`checkpoint-3:weights` (step 3's weight files written, state file not yet), `checkpoint-3:before-rename`,
`best-3:weights`; `DIGSEG_FAIL_AT=<point>` raises the OSError of a full disk there (`<point>=EACCES`: that errno).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DigsegError, first_line

PREFIX = "step-"
STATE_FILE = "trainer_state.json"
SHARDS = "shards"  # a sharded run's folder of per-process safetensors files
BEST = "best"  # checkpoints/best/: the best validated step
BEST_FILE = "best.json"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def optimizer_to_flat(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON-able metadata.

    A state held as a tensor subclass (an 8-bit optimizer's quantized moments, e.g. torchao's OptimState8bit) is
    stored as its inner tensors (`__tensor_flatten__`: "state.<param>.<key>.<inner>") with its class, context
    and size in the metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    subclasses: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
                inner, context = value.__tensor_flatten__()
                for name in inner:
                    tensors[f"state.{param_id}.{key}.{name}"] = getattr(value, name)
                subclasses[f"{param_id}.{key}"] = {
                    "class": f"{type(value).__module__}.{type(value).__qualname__}", "inner": list(inner),
                    "context": list(context), "size": list(value.size()), "stride": list(value.stride())}
            elif isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return _contiguous(tensors), {"param_groups": state_dict["param_groups"], "scalars": scalars,
                                  "subclasses": subclasses}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    subclasses = meta.get("subclasses", {})
    state: dict[int, dict[str, Any]] = {}
    inner: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        owner, _, part = key.rpartition(".")  # "exp_avg.codes": inner tensor `codes` of subclass state `exp_avg`
        if f"{param_id}.{owner}" in subclasses:
            inner.setdefault(f"{param_id}.{owner}", {})[part] = value
        else:
            state.setdefault(int(param_id), {})[key] = value
    for where, info in subclasses.items():
        param_id, key = where.split(".", 1)
        cls = _subclass(info["class"])
        state.setdefault(int(param_id), {})[key] = cls.__tensor_unflatten__(
            inner[where], info["context"], torch.Size(info["size"]), tuple(info["stride"]))
    for param_id, entries in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


_SUBCLASS_MODULES = ("torchao.",)  # optimizer-state classes a checkpoint may name (nothing else is imported)


def _subclass(path: str) -> type:
    import importlib

    module, _, name = path.rpartition(".")
    if not path.startswith(_SUBCLASS_MODULES):
        raise DigsegError(f"checkpoint names an optimizer state class outside {_SUBCLASS_MODULES}: {path}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise DigsegError(f"checkpoint needs {path} to restore its optimizer state: {exc}") from exc


def _to_json(value: Any) -> Any:
    """trainer_state.json's values: one-element tensors (torchao keeps `lr` as one, and so does the LR schedule then)
    as {"tensor", "dtype"}, dtypes (in an optimizer state's flatten context) as {"dtype"}; `_from_json` reverses it,
    bit for bit."""
    if isinstance(value, torch.Tensor):
        return {"tensor": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"tensor", "dtype"}:
        return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
    if isinstance(value, dict) and set(value) == {"dtype"}:
        return getattr(torch, value["dtype"])
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def kill_point(name: str) -> None:
    """Fault-injection tests: SIGKILL this process if `DIGSEG_KILL_AT` names this point; raise the OSError of a
    full disk if `DIGSEG_FAIL_AT` names it (`<point>=EACCES`: that errno instead); otherwise nothing."""
    if os.environ.get("DIGSEG_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    point, _, code = os.environ.get("DIGSEG_FAIL_AT", "").partition("=")
    if point == name:
        number = getattr(errno, code or "ENOSPC")
        raise OSError(number, os.strerror(number))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def checkpoint_folder(root: Path, step: int, best: bool = False) -> Path:
    """Where step `step`'s checkpoint goes: `root/step-<step>`, or `root/best`."""
    return root / (BEST if best else f"{PREFIX}{step:08d}")


def staging_folder(final: Path) -> Path:
    """The temporary folder of a sharded checkpoint `final`: a name every process computes alike. The main process
    creates it (`begin_staging`), every process writes its shards into its `shards/`, and `save_checkpoint` with
    `staged=` completes and renames it."""
    return final.parent / f".tmp-{final.name}-sharded"


def begin_staging(final: Path, tmp: Path | None = None) -> Path:
    """Create checkpoint `final`'s temporary folder `tmp` (default: `staging_folder(final)`) empty, older leftovers
    removed (the main process, before anyone writes into it). -> it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent)
    tmp = tmp or staging_folder(final)
    tmp.mkdir()
    return tmp


def save_checkpoint(root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], optimizer_state: dict[str, Any],
                    extra_state: dict[str, Any], keep: int, staged: Path | None = None,
                    best: dict[str, Any] | None = None) -> Path:
    """Write `root/step-<step>` atomically and keep the newest `keep` complete checkpoints; or with `best` (its
    record, written as best.json) `root/best`, replacing the previous best. -> its path. `staged`: a sharded
    checkpoint's `staging_folder`, its shards written (`optimizer_state` then holds only the param groups)."""
    final = checkpoint_folder(root, step, best is not None)
    kind = BEST if best is not None else "checkpoint"  # names the kill and fault points
    tmp = staged if staged is not None else final.parent / f".tmp-{final.name}-{os.getpid()}"
    try:
        if staged is None:
            begin_staging(final, tmp)
        for name, tensors in weights.items():
            save_file(_contiguous(tensors), str(tmp / f"{name}.safetensors"))
        kill_point(f"{kind}-{step}:weights")
        opt_tensors, opt_meta = optimizer_to_flat(optimizer_state)
        if staged is None:
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "optimizer": opt_meta, **extra_state}
        (tmp / STATE_FILE).write_text(json.dumps(_to_json(state), indent=1))
        if best is not None:
            (tmp / BEST_FILE).write_text(json.dumps(best, indent=1))
        for file in sorted(tmp.rglob("*")):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            else:
                _fsync_dir(file)
        _fsync_dir(tmp)
        kill_point(f"{kind}-{step}:before-rename")
        if final.exists():  # a re-run of the same step (after resume), or a new best: replace it
            _remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        kept = list_checkpoints(final.parent)
        earlier = f"the newest complete one, {kept[-1].name}, is intact" if kept else "there is no earlier one"
        raise DigsegError(f"cannot write checkpoint {final}: {reason}; its partial write was removed and {earlier}: "
                          "make room (or restore access), then run the same command with --resume latest") from exc
    if best is None:
        prune_checkpoints(root, keep)
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (after each save, and on resume: a run killed
    between a save and its pruning leaves one too many)."""
    for old in list_checkpoints(root)[:-keep]:
        _remove_checkpoint(old)


def remove_stale(root: Path) -> None:
    """Delete `.tmp-*` folders left by a killed write or delete. Call from the one writer (the main process)."""
    for stale in root.glob(".tmp-*") if root.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint so that it is never seen half-deleted: rename it out of `step-*` first (atomic),
    then delete the renamed folder (a kill during that leaves a `.tmp-*` folder, removed by the next save)."""
    doomed = path.with_name(f".tmp-delete-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    _fsync_dir(path.parent)
    kill_point(f"delete-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """`latest` -> newest complete checkpoint in output_dir (None if there is none); else a checkpoint path."""
    if resume == "latest":
        found = list_checkpoints(output_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise DigsegError(f"not a complete checkpoint folder: {path} ({STATE_FILE} missing)")
    return path


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json (step, config, schedule, ...); no tensor file is read."""
    try:
        return _from_json(json.loads((path / STATE_FILE).read_text()))
    except (OSError, ValueError) as exc:
        raise DigsegError(f"cannot read checkpoint {path}: {exc}") from exc


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """-> (weights by name, optimizer state_dict, trainer state). A sharded checkpoint's weights and optimizer
    state are in its `shards/` folder (read by training/sharding.py): here no weights, and the param groups only."""
    state = read_trainer_state(path)
    try:
        weights = {f.stem: load_file(str(f)) for f in path.glob("*.safetensors") if f.name != "optimizer.safetensors"}
        if (path / SHARDS).is_dir():
            optimizer = {"state": {}, "param_groups": state.pop("optimizer")["param_groups"]}
        else:
            optimizer = optimizer_from_flat(load_file(str(path / "optimizer.safetensors")), state.pop("optimizer"))
    except (OSError, ValueError, KeyError) as exc:
        raise DigsegError(f"cannot read checkpoint {path}: {exc}") from exc
    return weights, optimizer, state
