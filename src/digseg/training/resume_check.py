"""What a resumed run may change (docs/training.md, "Resuming a run"). Before any step, `plan_resume` compares the
config (and the launch: process count, precision used; and the samples) with the checkpoint's: a change of a
SAFE_FIELDS field is accepted, any other leaves the run's trajectory and is refused with a one-line ConfigError
naming each `section.field: old -> new`, unless --allow-config-change. Accepted changes join the history."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..data.check import DataCheck, read_sample_list
from .checkpoint import read_trainer_state, resolve_resume
from .config import SECTIONS, OptimConfig, TrainConfig

logger = logging.getLogger("digseg.train")

# The fields whose change trains the same weights. `data.hf` is compared key by key ("data.hf.val_split").
SAFE_FIELDS = frozenset({
    "data.hf.val_split",  # what validation scores: training is the same without it
    "data.bad_samples",  # what it does to the sample list is compared itself ("data.samples", below)
    "data.num_workers", "data.prefetch_factor",  # who reads the samples: each depends on its request only
    "data.cache_latents", "data.cache_max_mib",  # the run's own VAE latents, kept instead of recomputed
    "optim.ema_device",  # where the EMA copy waits between updates
    "optim.max_consecutive_skips",  # when to give up: the steps taken until then are the same
    "run.output_dir", "run.checkpoint_every", "run.keep_checkpoints", "run.log_every", "run.log_with",
    "run.sample_every", "run.num_sample_images", "run.push_to_hub", "run.hub_private",
    "run.eval_every", "run.eval_samples",  # validation leaves the training weights as they were
})

# learning-rate schedules (diffusers' names) that do not depend on optim.max_steps: extending a run keeps the curve
SCHEDULES_WITHOUT_END = ("constant", "constant_with_warmup", "piecewise_constant")


def mixed_precision_of(optim: OptimConfig) -> str:
    """The precision a run computes in: optim.mixed_precision, else the launcher's, else the machine's best."""
    from ..devices import best_mixed_precision

    return optim.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION") or best_mixed_precision()


def launch_facts(optim: OptimConfig, num_processes: int) -> dict[str, Any]:
    """What a checkpoint records besides the config."""
    return {"num_processes": num_processes, "mixed_precision": mixed_precision_of(optim)}


@dataclass
class Change:
    field: str  # "section.field"
    old: Any
    new: Any
    safe: bool
    why: str = ""  # for a refused change that depends on other values: why it matters here

    def __str__(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return f"{self.field}: {json.dumps(self.old)} -> {json.dumps(self.new)}{why}"


@dataclass
class ResumePlan:
    checkpoint: Path
    step: int
    changes: list[Change]  # every changed field, safe or not
    history: list[dict[str, Any]]  # the checkpoint's config changes, plus this resume's (if any)

    @property
    def trajectory_changed(self) -> bool:
        return any(not c.safe for c in self.changes)


def _flat(config: dict[str, Any], launch: dict[str, Any] | None) -> dict[str, Any]:
    """{"section.field": value} over the current fields (a missing one at its default), JSON-normalized; a crop `n`
    is [n, n]. With `launch`, optim.mixed_precision is the precision used and launch.num_processes is added."""
    from ..data.hf_options import HFOptions

    flat = {}
    for section, cls in SECTIONS.items():
        given = config.get(section) or {}
        flat.update({f"{section}.{name}": json.loads(json.dumps(given.get(name, default)))
                     for name, default in dataclasses.asdict(cls()).items()})
    hf = flat.pop("data.hf") or {}
    for key, default in dataclasses.asdict(HFOptions()).items():
        flat[f"data.hf.{key}"] = hf.get(key, default)
    if isinstance(flat["data.crop_size"], int):
        flat["data.crop_size"] = [flat["data.crop_size"]] * 2
    if launch:
        flat["optim.mixed_precision"] = launch["mixed_precision"]
        flat["launch.num_processes"] = launch["num_processes"]
    return flat


def _safe_in_context(name: str, old: dict[str, Any], new: dict[str, Any], step: int) -> tuple[bool, str]:
    """-> (safe, why not). max_steps is safe when the schedule does not depend on it or no step is left; the global
    batch may be split otherwise (each sample's draws follow its slot in it)."""
    if name == "optim.max_steps":
        schedule = new["optim.lr_scheduler"]
        if schedule in SCHEDULES_WITHOUT_END or new[name] <= step:
            return True, ""
        return False, f"the {schedule} learning-rate schedule is built from it"
    if name in ("optim.batch_size", "launch.num_processes"):
        before = old["optim.batch_size"] * old.get("launch.num_processes", 1)
        after = new["optim.batch_size"] * new.get("launch.num_processes", 1)
        return before == after, "" if before == after else f"global batch {before} -> {after}"
    return name in SAFE_FIELDS, ""


def config_changes(saved: dict[str, Any], given: dict[str, Any], step: int, saved_launch: dict[str, Any] | None = None,
                   given_launch: dict[str, Any] | None = None) -> list[Change]:
    """The fields that differ between the checkpoint's config (`saved`, at `step`) and `given`, each classified."""
    both = bool(saved_launch) and bool(given_launch)
    old, new = _flat(saved, saved_launch if both else None), _flat(given, given_launch if both else None)
    return [Change(name, old.get(name), new[name], *_safe_in_context(name, old, new, step))
            for name in new if old.get(name) != new[name]]


def check_changes(changes: list[Change], allow: bool, checkpoint: Path) -> None:
    """A one-line ConfigError listing every change that leaves the trajectory, unless `allow`."""
    refused = [c for c in changes if not c.safe]
    if refused and not allow:
        run = checkpoint.parent.parent
        raise ConfigError(f"cannot resume from {checkpoint} with a changed config: {', '.join(map(str, refused))}; "
                          f"to continue with the run's own values, give none of these: `digseg train --output {run} "
                          f"--resume {checkpoint}` reads them from {run / 'config.yaml'}; or add --allow-config-change "
                          "to continue with the new ones (the run then no longer follows one config's trajectory)")


def samples_facts(check: DataCheck | None) -> dict[str, Any] | None:
    """What a checkpoint records of the samples trained on; None for generated data."""
    return None if check is None else {"digest": check.kept_digest(), "count": len(check.kept)}


def samples_change(saved: dict[str, Any] | None, check: DataCheck | None, run_dir: Path) -> Change | None:
    """A change of the samples trained on, named file by file when the run folder kept the checkpoint's list."""
    now = samples_facts(check)
    if saved is None or now is None or saved["digest"] == now["digest"]:
        return None
    old_names, new_names = read_sample_list(run_dir, saved["digest"]), check.kept_names()
    why = "the samples differ"
    if old_names is not None:
        added, removed = sorted(set(new_names) - set(old_names)), sorted(set(old_names) - set(new_names))
        parts = [f"{label} {len(names)}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
                 for label, names in (("added", added), ("removed", removed)) if names]
        why = "; ".join(parts) or "the same samples in another order"
    return Change("data.samples", f"{saved['count']} samples", f"{now['count']} samples", False, why)


def plan_resume(config: TrainConfig, resume: str | None, allow: bool = False,
                launch: dict[str, Any] | None = None, samples: DataCheck | None = None) -> ResumePlan | None:
    """Resolve `resume` ("latest" or a checkpoint folder) and check `config` (and with `samples`, the training data's
    check) against the checkpoint's; None when there is nothing to resume from. Reads no tensor."""
    path = resolve_resume(resume, Path(config.run.output_dir)) if resume else None
    if path is None:
        return None
    state = read_trainer_state(path)
    step = int(state["step"])
    if state.get("config") is None:
        logger.warning("%s records no config: the resumed config is not checked against it", path)
        return ResumePlan(path, step, [], [])
    changes = config_changes(state["config"], config.to_dict(), step, state.get("launch"), launch)
    changes += filter(None, [samples_change(state.get("samples"), samples, Path(config.run.output_dir))])
    check_changes(changes, allow, path)
    plan = ResumePlan(path, step, changes, list(state.get("config_changes") or []))
    if changes:  # config.yaml's `config_changes` (and log.jsonl's note): the new values apply from `step` on
        plan.history.append({"step": step, "trajectory": "changed" if plan.trajectory_changed else "kept",
                             "fields": {c.field: [c.old, c.new] for c in changes}})
    return plan
