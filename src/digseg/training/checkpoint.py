"""Training checkpoints: safetensors for every tensor, JSON for the rest, written atomically; nothing is unpickled.

`checkpoints/step-00000100/`: unet, text_pathway, optimizer (`optimizer_to_flat`) and ema .safetensors (a sharded
run: `shards/`, one file per process) and trainer_state.json; `checkpoints/best/` (validation.py) the same plus
best.json, never pruned. Each is written into a `.tmp-*` folder, fsync'ed and renamed into place; a failed write
removes its folder and raises a one-line `DigsegError`.

Fault injection (`kill_point`): `DIGSEG_KILL_AT=<point>` SIGKILLs the process at that point (e.g. `step-3`,
`checkpoint-3:weights`, `checkpoint-3:before-rename`, `best-3:weights`, `delete-step-00000002`, `validation-3`);
`DIGSEG_FAIL_AT=<point>` raises the OSError of a full disk there (`<point>=EACCES`: that errno)."""

from __future__ import annotations

import errno
import importlib
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
BEST = "best"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def optimizer_to_flat(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`optimizer.state_dict()` -> (tensors, JSON-able metadata); a tensor subclass (torchao's 8-bit moments) as its
    inner tensors (`__tensor_flatten__`)."""
    tensors, scalars, subclasses = {}, {}, {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                scalars.setdefault(str(param_id), {})[key] = value
            elif type(value) is torch.Tensor:
                tensors[f"state.{param_id}.{key}"] = value
            else:
                inner, context = value.__tensor_flatten__()
                tensors.update({f"state.{param_id}.{key}.{name}": getattr(value, name) for name in inner})
                subclasses[f"{param_id}.{key}"] = {
                    "class": f"{type(value).__module__}.{type(value).__qualname__}", "inner": list(inner),
                    "context": list(context), "size": list(value.size()), "stride": list(value.stride())}
    return _contiguous(tensors), {"param_groups": state_dict["param_groups"], "scalars": scalars,
                                  "subclasses": subclasses}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    tensors, state = dict(tensors), {}
    for where, info in meta.get("subclasses", {}).items():
        param_id, key = where.split(".", 1)
        module, _, name = info["class"].rpartition(".")
        if not module.startswith("torchao."):  # nothing else is imported
            raise DigsegError(f"checkpoint names an optimizer state class outside torchao: {info['class']}")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise DigsegError(f"checkpoint needs {info['class']} to restore its optimizer state: {exc}") from exc
        inner = {part: tensors.pop(f"state.{where}.{part}") for part in info["inner"]}
        state.setdefault(int(param_id), {})[key] = cls.__tensor_unflatten__(
            inner, info["context"], torch.Size(info["size"]), tuple(info["stride"]))
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _to_json(value: Any) -> dict[str, Any]:
    """json.dumps's `default`: a one-element tensor (torchao's `lr`) as {"tensor", "dtype"}, a dtype as {"dtype"}."""
    if isinstance(value, torch.Tensor):
        return {"tensor": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _from_json(value: dict[str, Any]) -> Any:
    """json.loads's `object_hook`, reversing `_to_json` bit for bit."""
    if set(value) == {"tensor", "dtype"}:
        return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
    return getattr(torch, value["dtype"]) if set(value) == {"dtype"} else value


def kill_point(name: str) -> None:
    """SIGKILL this process if `DIGSEG_KILL_AT` names this point; raise an OSError if `DIGSEG_FAIL_AT` does."""
    if os.environ.get("DIGSEG_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    point, _, code = os.environ.get("DIGSEG_FAIL_AT", "").partition("=")
    if point == name:
        number = getattr(errno, code or "ENOSPC")
        raise OSError(number, os.strerror(number))


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a folder, on systems that cannot open one
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def staging_folder(root: Path, step: int, best: bool = False) -> Path:
    """A sharded checkpoint's staging folder, named alike by all processes; `save_checkpoint(staged=)` completes it."""
    return root / f".tmp-{BEST if best else f'{PREFIX}{step:08d}'}-sharded"


def begin_staging(tmp: Path) -> None:
    """Create the temporary folder `tmp` empty, older leftovers removed."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(tmp.parent)
    tmp.mkdir()


def save_checkpoint(root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], optimizer_state: dict[str, Any],
                    extra_state: dict[str, Any], keep: int, staged: Path | None = None,
                    best: dict[str, Any] | None = None) -> Path:
    """Write `root/step-<step>` (the newest `keep` kept) or with `best` (best.json's record) `root/best` -> its path.
    `staged`: a sharded checkpoint's `staging_folder`, shards written (`optimizer_state`: the param groups only)."""
    final = root / (BEST if best is not None else f"{PREFIX}{step:08d}")
    kind = BEST if best is not None else "checkpoint"  # names the kill and fault points
    tmp = staged or root / f".tmp-{final.name}-{os.getpid()}"
    try:
        if staged is None:
            begin_staging(tmp)
        for name, tensors in weights.items():
            save_file(_contiguous(tensors), str(tmp / f"{name}.safetensors"))
        kill_point(f"{kind}-{step}:weights")
        opt_tensors, opt_meta = optimizer_to_flat(optimizer_state)
        if staged is None:
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "optimizer": opt_meta, **extra_state}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=_to_json))
        if best is not None:
            (tmp / "best.json").write_text(json.dumps(best, indent=1))
        for path in [*tmp.rglob("*"), tmp]:
            _fsync(path)
        kill_point(f"{kind}-{step}:before-rename")
        if final.exists():  # a re-run of the same step (after resume), or a new best: replace it
            _remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync(root)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        kept = list_checkpoints(root)
        earlier = f"the newest complete one, {kept[-1].name}, is intact" if kept else "there is no earlier one"
        raise DigsegError(f"cannot write checkpoint {final}: {reason}; its partial write was removed and {earlier}: "
                          "make room (or restore access), then run the same command with --resume latest") from exc
    if best is None:
        prune_checkpoints(root, keep)
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        _remove_checkpoint(old)


def remove_stale(root: Path) -> None:
    """Delete `.tmp-*` folders left by a killed write or delete (the main process only)."""
    for stale in root.glob(".tmp-*") if root.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)


def _remove_checkpoint(path: Path) -> None:
    """Rename a checkpoint out of `step-*` (atomic), then delete it: it is never seen half-deleted."""
    doomed = path.with_name(f".tmp-delete-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    _fsync(path.parent)
    kill_point(f"delete-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    return sorted((p for p in root.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file()), key=checkpoint_step)


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
        return json.loads((path / STATE_FILE).read_text(), object_hook=_from_json)
    except (OSError, ValueError) as exc:
        raise DigsegError(f"cannot read checkpoint {path}: {exc}") from exc


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """-> (weights by name, optimizer state_dict, trainer state); a sharded one's: no weights, the param groups."""
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
