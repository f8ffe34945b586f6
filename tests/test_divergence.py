"""A diverging run: non-finite gradients skip the step, a row of them or a non-finite loss stops the run naming the
last healthy checkpoint with a command that resumes from it, and nothing non-finite is ever written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.errors import ConfigError, DigsegError
from digseg.pipelines.pipeline import DiGSegPipeline
from digseg.training.checkpoint import list_checkpoints, load_checkpoint
from digseg.training.divergence import nan_gradient
from training_helpers import error_line, train_config, trainer


def _run(backbone, tmp_path, nan_at, **kw):
    """A trainer whose gradients are NaN at the steps (iterations from weights w_k, k in `nan_at`)."""
    pipe = DiGSegPipeline.from_backbone(backbone, class_names=list(SYNTHETIC_CLASSES))
    pipe.set_progress_bar_config(disable=True)
    config = train_config(**{**dict(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=2, learning_rate=1e-3,
                                    lr_warmup_steps=0, checkpoint_every=1, keep_checkpoints=1, log_with="none",
                                    resolution=32), **kw})
    tr = trainer(config, pipe, SyntheticScenes(6, size=32), show_progress=False)
    loss_of, seen = tr._loss, {}

    def loss(batch, gen):
        seen[tr.step] = [p.detach().clone() for p in tr.params]  # the weights this step starts from
        value = loss_of(batch, gen)
        return nan_gradient(value) if tr.step in nan_at else value

    tr._loss = loss
    return tr, seen


def _everything_on_disk_is_finite(run: Path) -> None:
    files = list(run.rglob("*.safetensors"))
    assert files
    for file in files:
        for name, tensor in load_file(str(file)).items():
            assert torch.isfinite(tensor).all(), f"{file}: {name}"


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_a_step_with_non_finite_gradients_is_skipped(tiny_backbone, tmp_path, precision):
    tr, seen = _run(tiny_backbone, tmp_path, nan_at={1}, mixed_precision=precision)
    tr.train()
    assert tr.guard.skipped == 1
    for before, after in zip(seen[1], seen[2]):  # step 2 (from w_1) made no update
        assert torch.equal(before, after)
    assert not all(torch.equal(a, b) for a, b in zip(seen[2], tr.params))  # step 3 did
    run = tmp_path / "run"
    # no checkpoint during the skipped step; the newest proved healthy, so the older ones were pruned
    assert [int(p.name[5:]) for p in list_checkpoints(run / "checkpoints")] == [3]
    assert '"skipped_step"' in (run / "log.jsonl").read_text()
    _everything_on_disk_is_finite(run)


def test_skips_in_a_row_stop_naming_the_last_healthy_checkpoint(tiny_backbone, tmp_path):
    tr, _ = _run(tiny_backbone, tmp_path, nan_at=set(range(2, 99)), max_steps=10, max_consecutive_skips=3)
    with pytest.raises(DigsegError) as caught:
        tr.train()
    message = str(caught.value)
    assert "3 steps in a row had non-finite gradients" in message and "\n" not in message
    healthy = re.search(r"last healthy checkpoint is (\S+);", message).group(1)
    # w_2 failed: step-2 (written right after the update that made it) is not healthy, step-1 is and still exists
    assert Path(healthy).name == "step-00000001" and Path(healthy).is_dir()
    _everything_on_disk_is_finite(tmp_path / "run")
    _, _, state = load_checkpoint(Path(healthy))
    assert state["skips"] == {"skipped": 0, "consecutive": 0, "since": 0}


def test_non_finite_numbers_in_the_config_are_refused(capsys):
    for key, value in (("learning_rate", float("inf")), ("learning_rate", float("nan")), ("learning_rate", 0.0),
                       ("weight_decay", float("inf")), ("max_grad_norm", -1.0)):
        with pytest.raises(ConfigError, match=f"optim.{key}"):
            train_config(**{key: value})
    assert main(["train", "--learning-rate", "inf", "--pretrained", "x"]) == 2
    assert "optim.learning_rate must be a finite number, got inf" in error_line(capsys)


def test_a_blown_up_run_names_a_checkpoint_from_before_and_its_command_resumes(tiny_backbone, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", "--pretrained", str(tiny_backbone), "--output", str(run), "--crop-size", "32",
              "--cfg-options", "data.num_scenes=6", "--batch-size", "2", "--checkpoint-every", "1", "--cfg-options", "run.keep_checkpoints=1",
              "run.log_with=none", "data.augmentation=false"]
    assert main([*common, "--max-steps", "2", "--learning-rate", "1e-3"]) == 0
    capsys.readouterr()
    # continued at a learning rate that ruins the weights in one update: w_3 gives a NaN loss
    assert main([*common, "--max-steps", "5", "--learning-rate", "1e6", "--resume", "latest",
                 "--allow-config-change"]) == 2
    line = error_line(capsys)
    assert "loss became nan at step 3" in line
    assert re.search(r"last healthy checkpoint is \S+step-00000002;", line), line
    _everything_on_disk_is_finite(run)
    command = line.split("lower learning rate: ", 1)[1]
    assert command.startswith("digseg train ") and "--learning-rate 0.001" in command  # the rate step-2 was trained at
    assert main(shlex.split(command)[1:]) == 0  # the printed command, as printed
    _everything_on_disk_is_finite(run)


def test_non_finite_weights_are_seen_in_parameters_and_tensors():
    """The checks before a checkpoint and the final save read parameters themselves, not only plain tensors."""
    from digseg.training.divergence import all_finite

    weight = torch.nn.Parameter(torch.ones(3))
    assert all_finite([weight, torch.zeros(2), torch.arange(3)])
    with torch.no_grad():
        weight[1] = float("nan")
    assert not all_finite([weight])
    assert not all_finite([torch.tensor([1.0, float("inf")])])
