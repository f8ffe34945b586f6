"""One writer per `digseg predict` output folder (`digseg.run_lock`, PREDICT): a second run into a folder in use
stops before loading the model, naming the holder and leaving the folder as it was; the lock of a killed holder
blocks nothing; under a launcher every process of a refused run stops, none waits at a barrier."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.cli import commands, main
from digseg.cli.predict import run_predict
from digseg.cli.predict import class_fractions
from digseg.data.synthetic import SYNTHETIC_CLASSES
from digseg.errors import DigsegError
from digseg.run_lock import PREDICT, RunFolderLock
from training_helpers import error_line, lock_held_elsewhere

REPO = Path(__file__).resolve().parents[1]
LOCK_FILE = PREDICT.file


@pytest.fixture(scope="module")
def model(tiny_backbone, tmp_path_factory):
    from digseg import DiGSegPipeline

    path = tmp_path_factory.mktemp("model") / "model"
    DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES)).save_pretrained(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray((rng.random((32, 40, 3)) * 255).astype(np.uint8)).save(folder / f"p{k}.png")
    return folder


def _args(model: Path, photos: Path, out: Path) -> list[str]:
    return ["predict", "--model", str(model), "--image", str(photos), "--output", str(out), "--steps", "1",
            "--outputs", "labels", "--no-progress"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    for name in ("DIGSEG_KILL_AT", "DIGSEG_FAIL_AT"):
        env.pop(name, None)
    return env


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _labels_agree_with_summary(out: Path, photos: Path) -> None:
    """Every image of `photos` has a label PNG, and summary.json's class fractions are those of that PNG."""
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["images"]) == sorted(p.name for p in photos.iterdir()) and summary["skipped"] == []
    for name, fractions in summary["images"].items():
        labels = np.asarray(Image.open(out / f"{Path(name).stem}_label.png")).astype(np.int64)
        classes, _ = class_fractions(labels, list(SYNTHETIC_CLASSES))
        assert {c["name"]: c["fraction"] for c in classes} == fractions, name


def test_a_second_predict_into_a_folder_in_use_stops_before_loading_the_model(model, photos, tmp_path, capsys,
                                                                              monkeypatch):
    out = tmp_path / "out"
    assert main(_args(model, photos, out)) == 0  # a finished run's files and records, which the refused run must keep
    with lock_held_elsewhere(out, "PREDICT") as holder:
        started = json.loads((out / f"{LOCK_FILE}.json").read_text())["started"]
        before = _snapshot(out)
        monkeypatch.setattr(commands, "load_model", _not_reached)
        capsys.readouterr()
        assert main(_args(model, photos, out)) == 2  # the second run (this process)
        assert error_line(capsys) == (f"error: output folder {out} is in use by another predict run (pid {holder.pid} "
                                      f"on host {socket.gethostname()}, started {started}); wait for it to end, or "
                                      "predict into another --output")
        assert _snapshot(out) == before  # it wrote nothing and removed nothing
        with pytest.raises(DigsegError, match=f"in use by another predict run \\(pid {holder.pid} "):
            run_predict(None, sorted(photos.iterdir()), out, {}, {})  # from Python: refused before any work
        assert _snapshot(out) == before
    _labels_agree_with_summary(out, photos)


def _not_reached(*args, **kwargs):
    raise AssertionError("a refused run went on to load its model")


def test_the_lock_of_a_killed_predict_blocks_nothing(model, photos, tmp_path):
    out = tmp_path / "out"
    with lock_held_elsewhere(out, "PREDICT"):  # SIGKILLed at the end of the block: its files stay behind
        pass
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, f"{LOCK_FILE}.json"]
    assert main(_args(model, photos, out)) == 0
    assert not (out / LOCK_FILE).exists() and not (out / f"{LOCK_FILE}.json").exists()
    _labels_agree_with_summary(out, photos)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_every_launched_process_of_a_refused_run_stops_with_the_error(model, photos, tmp_path):
    """torchrun, 2 processes: the main process cannot take the lock (this test process holds the folder), and both
    processes print the one-line error and exit 2 at once; neither waits for the other at a barrier."""
    out = tmp_path / "out"
    with RunFolderLock(out, PREDICT):
        started = json.loads((out / f"{LOCK_FILE}.json").read_text())["started"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "digseg.cli",
                                   *_args(model, photos, out), "--device", "cpu"],
                                  capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, f"{LOCK_FILE}.json"]  # nothing written
    assert launched.returncode != 0
    expected = (f"error: output folder {out} is in use by another predict run (pid {os.getpid()} on host "
                f"{socket.gethostname()}, started {started}); wait for it to end, or predict into another --output")
    # one line from each process (the two may interleave on the shared stderr), and no other error
    assert launched.stderr.count(expected) == 2, launched.stderr[-3000:]
    assert launched.stderr.count("error: ") == 2, launched.stderr[-3000:]
