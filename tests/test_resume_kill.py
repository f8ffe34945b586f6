"""SIGKILL a training run at several points, resume with `--resume latest`, and finish where an uninterrupted
run finishes. A killed checkpoint write must never be picked up. Augmentation is on (the folder preset: random
rescale, crop, flip, colour distortion), and the killed runs read samples in 2 DataLoader workers while the
reference run reads them in the training process: the trajectory depends on neither.

Kill points are set with DIGSEG_KILL_AT (the process SIGKILLs itself there, see training/checkpoint.py), plus one
kill sent from outside at whatever point the run has reached. The killed runs are child processes; the reference
run and the last resume run in this process (one thread, as the child processes).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
from digseg.training.checkpoint import list_checkpoints, load_checkpoint
from training_helpers import assert_same_weights, cli_env, cli_here, cli_process, final_weights

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _assert_only_complete_checkpoints(run: Path) -> list[int]:
    """Every `step-*` folder loads in full; returns their steps."""
    steps = []
    for path in list_checkpoints(run / "checkpoints"):
        weights, optimizer, state = load_checkpoint(path)
        assert {"unet", "text_pathway"} <= weights.keys() and optimizer["state"] and state["step"] == int(path.name[5:])
        steps.append(state["step"])
    return steps


def test_sigkill_at_several_points_then_resume_gives_the_uninterrupted_weights(tiny_backbone, tmp_path):
    data = save_scenes_as_folder(SyntheticScenes(8, size=32, seed=5), tmp_path / "data")
    common = ["train", "--pretrained", str(tiny_backbone), "--dataset", "folder", "--data-root", str(data),
              "--crop-size", "32", "--batch-size", "2", "--max-steps", "8", "--checkpoint-every", "2",
              "--cfg-options", "run.keep_checkpoints=2", "--learning-rate", "1e-3"]
    reference, run = tmp_path / "reference", tmp_path / "killed"
    assert cli_here([*common, "--output", str(reference)]) == 0
    assert yaml.safe_load((reference / "config.yaml").read_text())["data"]["augmentation"] is True
    common += ["--cfg-options", "data.num_workers=2"]

    # 1) killed right after step 3 (step 2 is checkpointed), 2) during step 4's checkpoint write (weights written,
    # state not), 3) after step 6's checkpoint is complete in its temporary folder but before it is renamed,
    # 4) while step 2's checkpoint is being deleted (keep 2: step 6 landed, so step 2 goes)
    for kill_at, newest_complete in (("step-3", 2), ("checkpoint-4:weights", 2), ("checkpoint-6:before-rename", 4),
                                     ("delete-step-00000002", 6)):
        result = cli_process([*common, "--output", str(run), "--resume", "latest"], kill_at=kill_at)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        assert _assert_only_complete_checkpoints(run)[-1] == newest_complete
        assert not (run / "model_index.json").exists()
    assert any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())  # the killed write's leftovers

    # 5) killed from outside, at whatever point it has reached once step 8's checkpoint has landed (pruning step 4,
    # saving the final model; a kill before pruning leaves step 4, which the resume prunes). A kill while pruning
    # once left a step-* folder without its optimizer file; old checkpoints are now renamed out of step-* before
    # they are deleted.
    proc = subprocess.Popen([sys.executable, "-m", "digseg.cli", *common, "--output", str(run), "--resume", "latest"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step-00000008").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert 6 <= _assert_only_complete_checkpoints(run)[-1] <= 8

    assert cli_here([*common, "--output", str(run), "--resume", "latest"]) == 0
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    assert _assert_only_complete_checkpoints(run) == [6, 8]
    assert_same_weights(final_weights(reference), final_weights(run), "the uninterrupted run")
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # killed runs' extra log lines were dropped on resume
