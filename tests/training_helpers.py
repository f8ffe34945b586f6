"""Test helpers shared by the test files: a TrainConfig from flat keys and the trainer `build_run` makes from it;
`digseg` in this process or in a child process; weights of a run or a pipeline and their comparisons; the mIoU of a
predictions folder computed by hand; a free TCP port; a run-folder lock held by another process."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from digseg.training.config import SECTIONS, TrainConfig
from digseg.training.run import build_run

_SECTION_OF = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


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


def fresh_pipe(backbone: Path):
    """A new (untrained) DiGSeg pipeline over the synthetic classes, progress bars off (the `tiny_pipe` fixture)."""
    from digseg import DiGSegPipeline
    from digseg.data.synthetic import SYNTHETIC_CLASSES

    pipe = DiGSegPipeline.from_backbone(backbone, class_names=list(SYNTHETIC_CLASSES))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with `seed` (a pipeline call's noise)."""
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ `digseg train` runs
def cli_env(kill_at: str | None = None, tmpdir: Path | None = None) -> dict[str, str]:
    """The environment of a `digseg` child process: one thread, offline, quiet; SIGKILLs itself at `kill_at`
    (DIGSEG_KILL_AT, training/checkpoint.py) when given; its temporary files in `tmpdir` when given (a killed process
    leaves them behind)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               DIFFUSERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    env.pop("DIGSEG_KILL_AT", None)
    if kill_at:
        env["DIGSEG_KILL_AT"] = kill_at
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def cli_process(args: list[str], kill_at: str | None = None, tmpdir: Path | None = None,
                timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m digseg.cli ARGS` in a child process (what a SIGKILL needs), its output captured."""
    return subprocess.run([sys.executable, "-m", "digseg.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(kill_at, tmpdir), check=False)


def cli_here(args: list[str]) -> int:
    """`digseg ARGS` in this process with one thread, as `cli_process` runs it: a run here and a run there that
    must end on the same weights sum in the same order."""
    from digseg.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(args)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ weights
def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The trained U-Net's and text pathway's weights of a finished run folder, by "<part>.<name>"."""
    return {f"{part}.{k}": v for part in ("unet", "text_pathway")
            for k, v in load_file(str(run / part / "diffusion_pytorch_model.safetensors")).items()}


def adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    """The tensors of a finished LoRA run's adapter folder (<run>/adapter/adapter_model.safetensors)."""
    from digseg.models.adapters import WEIGHTS_FILE

    return load_file(str(run / "adapter" / WEIGHTS_FILE))


def pipe_weights(pipe) -> dict[str, torch.Tensor]:
    """An in-memory pipeline's U-Net and text pathway weights, copied, named as `final_weights` names them."""
    return {f"{part}.{k}": v.detach().clone() for part in ("unet", "text_pathway")
            for k, v in getattr(pipe, part).state_dict().items()}


def start_weights(backbone: Path) -> dict[str, torch.Tensor]:
    """The U-Net weights a run on `backbone` starts from, named as `final_weights` names them (conv_in is left out:
    it is widened when the pipeline is built)."""
    unet = load_file(str(backbone / "unet" / "diffusion_pytorch_model.safetensors"))
    return {f"unet.{k}": v for k, v in unet.items() if not k.startswith("conv_in")}


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two sets of the same weights."""
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def assert_same_weights(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str = "the reference",
                        bound: float = 1e-6) -> None:
    worst = max_weight_diff(want, got)
    assert worst < bound, f"{worst} away from {what}"


def relative_update_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                         start: dict[str, torch.Tensor]) -> float:
    """|update_a - update_b| / |update_a| over the weights of `start` (the updates two runs made from it)."""
    ua = torch.cat([(a[k].float() - start[k].float()).flatten() for k in start])
    ub = torch.cat([(b[k].float() - start[k].float()).flatten() for k in start])
    return ((ua - ub).norm() / ua.norm()).item()


# ------------------------------------------------------------------------------------ scores, ports
def miou_by_hand(predictions: Path, masks: Path, num_classes: int, ignore_index: int = 255) -> float:
    """mmsegmentation's mIoU (%) of the label PNGs in `predictions` against the same-named PNGs in `masks`: IoU
    summed over every image's pixels, averaged over the classes in the labels or the predictions. Written out here
    with numpy, independently of digseg.evaluation."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    files = sorted(predictions.glob("*.png"))
    assert files, f"no predictions in {predictions}"
    for file in files:
        pred = np.asarray(Image.open(file)).astype(np.int64)
        label = np.asarray(Image.open(masks / file.name)).astype(np.int64)
        valid = label != ignore_index
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (label == c) & valid)
            union[c] += np.sum(((pred == c) | (label == c)) & valid)
    seen = union > 0
    return float(100 * np.mean(inter[seen] / union[seen]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
