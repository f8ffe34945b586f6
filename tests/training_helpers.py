"""Test helpers: a TrainConfig from flat keys, the trainer `build_run` makes from it, and a run-folder lock held by
another process."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file

from digseg.training.config import SECTIONS, TrainConfig
from digseg.training.run import build_run

_SECTION_OF = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def fresh_pipe(backbone):
    """A DiGSeg pipeline built from `backbone` for the synthetic scenes' classes, progress bars off."""
    from digseg import DiGSegPipeline
    from digseg.data.synthetic import SYNTHETIC_CLASSES

    pipe = DiGSegPipeline.from_backbone(backbone, class_names=list(SYNTHETIC_CLASSES))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def digseg_cli(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`digseg ARGS` in a subprocess, offline, one thread; `kill_at` sets the DIGSEG_KILL_AT fault point."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.pop("DIGSEG_KILL_AT", None)
    if kill_at:
        env["DIGSEG_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "digseg.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def train_config(**flat) -> TrainConfig:
    """Flat keys, each put in its section; `resolution=N` is a square crop. Augmentation is off unless given
    (most tests check the trainer on fixed samples)."""
    if "resolution" in flat:
        flat["crop_size"] = flat.pop("resolution")
    flat.setdefault("augmentation", False)
    values: dict[str, dict] = {}
    for key, value in flat.items():
        values.setdefault(_SECTION_OF[key], {})[key] = value
    return TrainConfig.from_dict(values)


def trainer(config: TrainConfig, pipe, dataset, **kwargs):
    """`build_run` over a given pipeline and dataset."""
    return build_run(config, pipe=pipe, dataset=dataset, **kwargs)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The trained U-Net's and text pathway's weights of a finished run folder, by "<part>.<name>"."""
    return {f"{part}.{k}": v for part in ("unet", "text_pathway")
            for k, v in load_file(str(run / part / "diffusion_pytorch_model.safetensors")).items()}


def assert_same_weights(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str = "the reference") -> None:
    assert want.keys() == got.keys()
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    assert worst < 1e-6, f"{worst} away from {what}"


def error_line(capsys) -> str:
    """The one `error: ...` line a command printed on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# takes the lock argv[2] ("TRAIN", "PREDICT") of folder argv[1] and holds it until stdin closes; a refusal: exit 1
_HOLD = """import sys
from digseg import run_lock
from digseg.errors import DigsegError
lock = run_lock.RunFolderLock(sys.argv[1], getattr(run_lock, sys.argv[2]))
try:
    lock.acquire()
except DigsegError as exc:
    sys.exit(str(exc))
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


@contextlib.contextmanager
def lock_held_elsewhere(folder: Path, kind: str) -> Iterator[subprocess.Popen]:
    """Another process that holds the `kind` lock ("TRAIN", "PREDICT") of `folder` until the block ends, then is
    SIGKILLed (if still running): it never releases the lock itself."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), kind], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n", holder.communicate()[1]
        yield holder
    finally:
        holder.kill()
        holder.communicate()


def refusal_elsewhere(folder: Path, kind: str) -> str:
    """The refusal another process gets for the `kind` lock of `folder` ("" if it could take it, then let go)."""
    return subprocess.run([sys.executable, "-c", _HOLD, str(folder), kind], input="", capture_output=True,
                          text=True).stderr.strip()
