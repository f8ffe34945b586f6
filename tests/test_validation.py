"""Validation during training (`--eval-every`): scores logged at the right steps, `checkpoints/best/` holding the
best step's weights, a SIGKILL during validation costing nothing, and `--eval-every 0` changing nothing.

The runs are `digseg train` (synthetic scenes at 32 px, EMA on): 8 steps, checkpoints every 2 steps, validation
every 3 steps (steps 3, 6 and the last, 8) on the first 3 validation scenes. Runs that are SIGKILLed run in a child
process; every other run runs in this process, with one thread as the child processes run (`cli_here`).
"""

from __future__ import annotations

import json
import signal
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
from training_helpers import assert_same_weights, cli_here, cli_process, final_weights

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

EVAL_STEPS = [3, 6, 8]


def _common(backbone: Path) -> list[str]:
    return ["train", "--pretrained", str(backbone), "--dataset", "synthetic", "--cfg-options", "data.num_scenes=8",
            "--crop-size", "32", "--batch-size", "2", "--max-steps", "8", "--checkpoint-every", "2",
            "--learning-rate", "1e-3",
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
    assert cli_here([*_common(tiny_backbone), "--eval-every", "3", "--output", str(run)]) == 0
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
    assert cli_here(["train", "--config", str(reference / "config.yaml"), "--resume",
                     str(reference / "checkpoints" / "best"), "--max-steps", str(best_step), "--eval-every", "0",
                     "--output", str(model)]) == 0
    pipe = DiGSegPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    config = TrainConfig.load(reference / "config.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the training run ran
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
    result = cli_process(args, kill_at="validation-3", tmpdir=tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000002"
    assert not (run / "checkpoints" / "best").exists() and not _scores(run)
    # 2) killed validating step 6, whose checkpoint was written before: the resumed run validates step 6 first
    result = cli_process(args, kill_at="validation-6", tmpdir=tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000006"
    assert sorted(_scores(run)) == [3]
    # 3) killed after step 7 (step 6's validation logged): the resumed run validates step 6 again, and logs it once
    result = cli_process(args, kill_at="step-7", tmpdir=tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert list_checkpoints(run / "checkpoints")[-1].name == "step-00000006"
    assert sorted(_scores(run)) == [3, 6]
    assert cli_here(args) == 0  # 4) resumed from step 6 to the end

    assert_same_weights(final_weights(reference), final_weights(run))
    assert _scores(run) == _scores(reference)
    assert _best(run) == _best(reference)
    best = load_file(str(run / "checkpoints" / "best" / "ema.safetensors"))
    for name, value in load_file(str(reference / "checkpoints" / "best" / "ema.safetensors")).items():
        assert torch.equal(best[name], value), name


def test_eval_every_0_adds_nothing_and_validation_leaves_training_alone(reference, tiny_backbone, tmp_path):
    run = tmp_path / "plain"
    assert cli_here([*_common(tiny_backbone), "--output", str(run)]) == 0
    assert not (run / "checkpoints" / "best").exists()
    assert not any("val/mIoU" in entry for entry in _log(run))
    assert json.loads((run / "checkpoints" / "step-00000008" / "trainer_state.json").read_text())["best"] is None
    # the validated run trained the same weights: validation (EMA swapped in and out, eval mode) changed nothing
    assert_same_weights(final_weights(reference), final_weights(run))
    assert [e for e in _log(run)] == [e for e in _log(reference) if "loss" in e]
