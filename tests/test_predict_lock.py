"""One writer per `digseg predict` output folder (`digseg.run_lock`, PREDICT): a second run into a folder in use
stops at once naming the first, and the first's files still agree with its summary; a killed run's stale lock is
taken over; under a launcher every process of a refused run stops, none waits at a barrier."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.cli import main
from digseg.cli.predict_outputs import class_fractions
from digseg.data.synthetic import SYNTHETIC_CLASSES
from digseg.run_lock import PREDICT
from training_helpers import error_line

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


@pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP is POSIX")
def test_a_second_predict_into_a_folder_in_use_stops_at_once_and_the_first_finishes_intact(model, photos, tmp_path,
                                                                                           capsys):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "digseg.cli", *_args(model, photos, out)], cwd=REPO, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_FILE).is_file() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # held mid-run, lock taken, while the second run tries
        assert (out / LOCK_FILE).is_file(), "the first run ended before the second could try"
        holder = json.loads((out / LOCK_FILE).read_text())
        before = _snapshot(out)
        capsys.readouterr()
        started = time.monotonic()
        assert main(_args(model, photos, out)) == 2  # the second run (this process)
        assert time.monotonic() - started < 5, "the refused run loaded the model first"
        line = error_line(capsys)
        assert f"output folder {out} is in use by another predict run (pid {first.pid} on host " \
               f"{socket.gethostname()}, started {holder['started']})" in line, line
        assert _snapshot(out) == before  # it wrote nothing and removed nothing (the first's records included)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert not (out / LOCK_FILE).exists()
    _labels_agree_with_summary(out, photos)


def test_the_stale_lock_of_a_killed_predict_is_taken_over_with_a_warning(model, photos, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # exited and reaped: no process has this pid now
    (out / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "earlier"}))
    with caplog.at_level(logging.WARNING, logger="digseg.predict"):
        assert main(_args(model, photos, out)) == 0
    assert f"took over the lock of a predict run that is gone (pid {pid} on host {socket.gethostname()}, " \
           "started earlier: its process is gone)" in caplog.text
    assert not (out / LOCK_FILE).exists()
    _labels_agree_with_summary(out, photos)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_every_launched_process_of_a_refused_run_stops_with_the_error(model, photos, tmp_path):
    """torchrun, 2 processes: the main process cannot take the lock (this test process holds the folder), and both
    processes print the one-line error and exit 2 at once; neither waits for the other at a barrier."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "T0"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "digseg.cli",
                               *_args(model, photos, out), "--device", "cpu"],
                              capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert launched.returncode != 0
    expected = (f"error: output folder {out} is in use by another predict run (pid {os.getpid()} on host "
                f"{socket.gethostname()}, started T0); wait for it to end, or predict into another --output")
    # one line from each process (the two may interleave on the shared stderr), and no other error
    assert launched.stderr.count(expected) == 2, launched.stderr[-3000:]
    assert launched.stderr.count("error: ") == 2, launched.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written, the holder's lock kept
