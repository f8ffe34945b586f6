"""Validation during training (`--eval-every`): scores logged at the right steps, `checkpoints/best/` holding the
best step's weights, a SIGKILL during validation costing nothing, and `--eval-every 0` changing nothing.

The runs are `digseg train` processes (synthetic scenes at 32 px, EMA on): 8 steps, checkpoints every 2 steps,
validation every 3 steps (steps 3, 6 and the last, 8) on the first 3 validation scenes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from digseg import DiGSegPipeline
from digseg.training.checkpoint import list_checkpoints
from digseg.training.config import TrainConfig
from digseg.training.run import build_dataset
from digseg.training.validation import evaluate
from training_helpers import assert_same_weights, final_weights

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

EVAL_STEPS = [3, 6, 8]


def _train(args: list[str], tmp: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", TMPDIR=str(tmp))
    env.pop("DIGSEG_KILL_AT", None)
    if kill_at:
        env["DIGSEG_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "digseg.cli", "train", *args], capture_output=True, text=True,
                          timeout=300, env=env, check=False)


def _common(backbone: Path) -> list[str]:
    return ["--pretrained", str(backbone), "--dataset", "synthetic", "--cfg-options", "data.num_scenes=8", "--crop-size", "32",
            "--batch-size", "2", "--max-steps", "8", "--checkpoint-every", "2", "--learning-rate", "1e-3",
            "--cfg-options", "optim.use_ema=true", "run.eval_samples=3"]


def _log(run: Path) -> list[dict]:
    log = run / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _scores(run: Path) -> dict[int, float]:
    """step -> logged validation mIoU (each step once)."""
    entries = [e for e in _log(run) if "val/mIoU" in e]
    assert len({e["step"] for e in entries}) == len(entries), f"a step validated twice in the log: {entries}"
    return {e["step"]: e["val/mIoU"] for e in entries}


def _best(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "best" / "best.json").read_text())


@pytest.fixture(scope="module")
def reference(tiny_backbone, tmp_path_factory) -> Path:
    """An uninterrupted run with validation."""
    run = tmp_path_factory.mktemp("validation") / "reference"
    result = _train([*_common(tiny_backbone), "--eval-every", "3", "--output", str(run)], run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_validation_logs_scores_and_keeps_the_best_step(reference, tmp_path):
    scores = _scores(reference)
    assert sorted(scores) == EVAL_STEPS  # every 3 steps and the last
    assert len(set(scores.values())) > 1, f"every validation scored the same; the best step would be arbitrary: {scores}"
    best_step = max(EVAL_STEPS, key=lambda s: (scores[s], -s))  # the highest score, the earlier step on a tie
    assert _best(reference) == {"step": best_step, "metric": "mIoU", "value": scores[best_step]}
    assert json.loads((reference / "checkpoints" / "best" / "trainer_state.json").read_text())["step"] == best_step
    assert [p.name for p in list_checkpoints(reference / "checkpoints")] == ["step-00000006", "step-00000008"]

    # best/ as a model folder (docs/training.md): resume from it with --max-steps at its step, scored again with
    # the same protocol: the logged score
    model = tmp_path / "best-model"
    export = _train(["--config", str(reference / "config.yaml"), "--resume", str(reference / "checkpoints" / "best"),
                     "--max-steps", str(best_step), "--eval-every", "0", "--output", str(model)], tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    pipe = DiGSegPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    config = TrainConfig.load(reference / "config.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the training process ran
    try:
        result = evaluate(pipe, build_dataset(config.data, config.run.seed, split="val"), config.run.eval_samples,
                          config.run.seed, config.optim.batch_size)
    finally:
        torch.set_num_threads(threads)
    assert result.value == scores[best_step]


def test_sigkill_during_validation_then_resume_gives_the_same_weights_and_best(reference, tiny_backbone, tmp_path):
    run = tmp_path / "killed"
    args = [*_common(tiny_backbone), "--eval-every", "3", "--output", str(run), "--resume", "latest"]
    # 1) killed validating step 3, after scoring, before logging: step 2 is the newest checkpoint, nothing recorded
    result = _train(args, tmp_path, kill_at="validation-3")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000002"
    assert not (run / "checkpoints" / "best").exists() and not _scores(run)
    # 2) killed validating step 6, whose checkpoint was written before: the resumed run validates step 6 first
    result = _train(args, tmp_path, kill_at="validation-6")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000006"
    assert sorted(_scores(run)) == [3]
    # 3) killed after step 7 (step 6's validation logged): the resumed run validates step 6 again, and logs it once
    result = _train(args, tmp_path, kill_at="step-7")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000006"
    assert sorted(_scores(run)) == [3, 6]
    final = _train(args, tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]

    assert_same_weights(final_weights(reference), final_weights(run))
    assert _scores(run) == _scores(reference)
    assert _best(run) == _best(reference)
    best = load_file(str(run / "checkpoints" / "best" / "ema.safetensors"))
    for name, value in load_file(str(reference / "checkpoints" / "best" / "ema.safetensors")).items():
        assert torch.equal(best[name], value), name


def test_eval_every_0_adds_nothing_and_validation_leaves_training_alone(reference, tiny_backbone, tmp_path):
    run = tmp_path / "plain"
    result = _train([*_common(tiny_backbone), "--output", str(run)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run / "checkpoints" / "best").exists()
    assert not any("val/mIoU" in entry for entry in _log(run))
    assert json.loads((run / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())["best"] is None
    # the validated run trained the same weights: validation (EMA swapped in and out, eval mode) changed nothing
    assert_same_weights(final_weights(reference), final_weights(run))
    assert [e for e in _log(run)] == [e for e in _log(reference) if "loss" in e]
