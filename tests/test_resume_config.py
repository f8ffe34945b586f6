"""Resume you can trust: a changed config is caught before any step (or applied, with --allow-config-change, and
recorded), one writer per run folder, and a checkpoint write that fails (disk full) loses nothing."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml
from diffusers.optimization import get_scheduler
from safetensors import SafetensorError

from digseg.cli import main
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.errors import ConfigError, DigsegError
from digseg.training import checkpoint as checkpoint_module
from digseg.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from digseg.training.config import SECTIONS, TrainConfig
from digseg.data.hf_options import HFOptions
from digseg.training.resume_check import SAFE_FIELDS, check_changes, config_changes
from digseg.run_lock import PREDICT, TRAIN, RunFolderLock
from training_helpers import (assert_same_weights, error_line, final_weights, fresh_pipe, lock_held_elsewhere,
                              refusal_elsewhere, train_config, trainer)

LOCK_FILE = TRAIN.file
LAUNCH = {"num_processes": 1, "mixed_precision": "no"}


# ------------------------------------------------------------------------------------------ the field table
def _other(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    return "x"  # None


def _changed(name: str) -> tuple[dict, dict]:
    """(saved, given) config dicts that differ in field `name` only ("data.hf.val_split": a key of data.hf)."""
    saved = TrainConfig().to_dict()
    given = copy.deepcopy(saved)
    section, key, *sub = name.split(".")
    if sub:
        given[section][key] = {sub[0]: _other(getattr(HFOptions(), sub[0]))}
    else:
        given[section][key] = _other(saved[section][key])
    return saved, given


def _every_field() -> list[str]:
    names = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    return [n for n in names if n != "data.hf"] + [f"data.hf.{f.name}" for f in dataclasses.fields(HFOptions)]


def test_safe_fields_are_accepted_and_every_other_field_is_refused_with_both_values(tmp_path):
    assert SAFE_FIELDS <= set(_every_field()), "SAFE_FIELDS names a field the config does not have"
    for name in _every_field():
        if name == "optim.mixed_precision":
            continue  # compared as the precision used: below
        saved, given = _changed(name)
        changes = config_changes(saved, given, 10, LAUNCH, LAUNCH)
        assert [c.field for c in changes] == [name]
        if name in SAFE_FIELDS:
            check_changes(changes, allow=False, checkpoint=tmp_path)
            continue
        with pytest.raises(ConfigError) as info:
            check_changes(changes, allow=False, checkpoint=tmp_path / "step-00000010")
        message = str(info.value)
        assert "\n" not in message and f"{name}: {json.dumps(changes[0].old)} -> {json.dumps(changes[0].new)}" \
            in message and "--allow-config-change" in message, message
        check_changes(changes, allow=True, checkpoint=tmp_path)  # the explicit way on
    for launch in ({**LAUNCH, "num_processes": 2}, {**LAUNCH, "mixed_precision": "bf16"}):  # the launch facts
        saved = TrainConfig().to_dict()
        (change,) = config_changes(saved, saved, 10, LAUNCH, launch)
        assert not change.safe and change.field in ("launch.num_processes", "optim.mixed_precision")


def test_rules_that_depend_on_other_values(tmp_path):
    saved = TrainConfig().to_dict()  # cosine over 1000 steps
    longer = copy.deepcopy(saved)
    longer["optim"]["max_steps"] = 2000
    (change,) = config_changes(saved, longer, 1000, LAUNCH, LAUNCH)
    assert not change.safe and "cosine" in str(change)  # the cosine curve is built from max_steps
    constant = copy.deepcopy(saved)
    constant["optim"]["lr_scheduler"] = "constant_with_warmup"
    constant_longer = copy.deepcopy(constant)
    constant_longer["optim"]["max_steps"] = 2000
    assert [c.safe for c in config_changes(constant, constant_longer, 1000, LAUNCH, LAUNCH)] == [True]
    shorter = copy.deepcopy(saved)
    shorter["optim"]["max_steps"] = 300  # stop at the checkpoint's step: nothing left to train
    assert [c.safe for c in config_changes(saved, shorter, 300, LAUNCH, LAUNCH)] == [True]
    assert [c.safe for c in config_changes(saved, shorter, 200, LAUNCH, LAUNCH)] == [False]
    # the global batch (batch_size x processes) decides: 4 x 1 -> 2 x 2 is the same run
    halved = copy.deepcopy(saved)
    halved["optim"]["batch_size"] = 2
    assert all(c.safe for c in config_changes(saved, halved, 10, LAUNCH, {**LAUNCH, "num_processes": 2}))
    # "" (the launcher's precision) that resolves to what the checkpoint used: no change
    explicit = copy.deepcopy(saved)
    explicit["optim"]["mixed_precision"] = "bf16"
    assert config_changes(saved, explicit, 10, {**LAUNCH, "mixed_precision": "bf16"},
                          {**LAUNCH, "mixed_precision": "bf16"}) == []
    # a crop given as n or as [n, n] is the same crop
    square, pair = copy.deepcopy(saved), copy.deepcopy(saved)
    square["data"]["crop_size"], pair["data"]["crop_size"] = 64, [64, 64]
    assert config_changes(square, pair, 10) == []


def test_lock_refuses_another_process_naming_it_and_is_free_once_that_process_is_killed(tmp_path):
    host = socket.gethostname()
    with lock_held_elsewhere(tmp_path, "TRAIN") as holder:
        record = json.loads((tmp_path / f"{LOCK_FILE}.json").read_text())
        assert record["pid"] == holder.pid and record["host"] == host
        with pytest.raises(DigsegError) as refused:
            RunFolderLock(tmp_path, TRAIN).acquire()
        assert str(refused.value) == (f"run folder {tmp_path} is in use by another training run (pid {holder.pid} on "
                                      f"host {host}, started {record['started']}); wait for it to end, or train into "
                                      "another --output")
        with RunFolderLock(tmp_path, PREDICT):  # each kind of run has its own lock
            pass
        holder.kill()  # SIGKILL: nothing of the holder runs, its files stay behind
        holder.wait()
        assert (tmp_path / LOCK_FILE).is_file()
        with RunFolderLock(tmp_path, TRAIN):  # the kernel let go of its lock
            assert json.loads((tmp_path / f"{LOCK_FILE}.json").read_text())["pid"] == os.getpid()
            with RunFolderLock(tmp_path, TRAIN):  # held by this process already (digseg train, then its trainer)
                pass
            assert f"pid {os.getpid()} on host {host}" in refusal_elsewhere(tmp_path, "TRAIN")  # still held
        assert not list(tmp_path.glob(".digseg-train*"))  # a release removes its files
        assert refusal_elsewhere(tmp_path, "TRAIN") == ""
    with RunFolderLock(tmp_path / "new", TRAIN):  # a folder the lock had to create, left empty: removed on release
        assert (tmp_path / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------------------ failed checkpoint writes
def _tiny_state(value: float):
    weights = {"unet": {"w": torch.full((4,), value)}, "text_pathway": {"b": torch.zeros(2)}}
    optimizer = {"state": {0: {"exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
    return weights, optimizer


@pytest.mark.parametrize("how", ["EACCES", "safetensors"])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch, how):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 2, *_tiny_state(2.0), {"lr_scheduler": {}}, keep=2)
    if how == "EACCES":  # permission lost after the weight files were written
        monkeypatch.setenv("DIGSEG_FAIL_AT", "checkpoint-4:weights=EACCES")
        reason = "Permission denied"
    else:  # safetensors reports I/O errors (ENOSPC included) as its own error type
        def full_disk(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
        reason = "No space left on device"
    with pytest.raises(DigsegError) as info:
        save_checkpoint(root, 4, *_tiny_state(4.0), {"lr_scheduler": {}}, keep=2)
    message = str(info.value)
    assert "\n" not in message and reason in message and "step-00000002, is intact" in message, message
    assert [p.name for p in root.iterdir()] == ["step-00000002"]  # no partial .tmp-* folder
    weights, _, state = load_checkpoint(root / "step-00000002")
    assert state["step"] == 2 and torch.equal(weights["unet"]["w"], torch.full((4,), 2.0))


# ------------------------------------------------------------------------------------------ training runs
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_changed_config_is_refused_before_any_step_or_applied_with_allow_config_change(tiny_backbone, tmp_path,
                                                                                        capsys):
    """The run of the report: 4 steps at crop 64, batch 4, the default learning rate; then the same folder with
    --max-steps 6 --crop-size 32 --batch-size 2 --learning-rate 1e-3."""
    config = tmp_path / "short_warmup.yaml"
    config.write_text(yaml.safe_dump({"optim": {"lr_warmup_steps": 1}, "run": {"log_every": 1, "log_with": "none"}}))
    run = tmp_path / "run"
    common = ["train", "--config", str(config), "--pretrained", str(tiny_backbone), "--dataset", "synthetic",
              "--cfg-options", "data.num_scenes=8", "--checkpoint-every", "2", "--output", str(run)]
    assert main([*common, "--crop-size", "64", "--batch-size", "4", "--max-steps", "4"]) == 0
    before = _snapshot(run)
    changed = [*common, "--resume", "latest", "--max-steps", "6", "--crop-size", "32", "--batch-size", "2",
               "--learning-rate", "1e-3"]
    capsys.readouterr()
    assert main(changed) == 2
    line = error_line(capsys)
    for field in ("data.crop_size: [64, 64] -> [32, 32]", "optim.max_steps: 4 -> 6", "optim.batch_size: 4 -> 2",
                  "optim.learning_rate: 3e-05 -> 0.001"):
        assert field in line, line
    assert _snapshot(run) == before  # nothing trained, nothing written: log.jsonl, config.yaml, checkpoints

    assert main([*changed, "--allow-config-change"]) == 0
    log = _log(run)
    note = next(entry for entry in log if "config_change" in entry)
    assert note["step"] == 4 and note["trajectory"] == "changed"
    assert note["config_change"]["optim.learning_rate"] == [3e-5, 1e-3]
    # the learning rates of steps 5 and 6: the new schedule (cosine over 6 steps, peak 1e-3) at those steps
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=6)
    want = {}
    for step in range(1, 7):
        optimizer.step()
        schedule.step()
        want[step] = schedule.get_last_lr()[0]
    got = {entry["step"]: entry["lr"] for entry in log if "lr" in entry}
    assert got[5] == pytest.approx(want[5], rel=1e-6) and got[6] == pytest.approx(want[6], rel=1e-6), (got, want)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["learning_rate"] == 1e-3 and saved["data"]["crop_size"] == [32, 32]
    (change,) = saved["config_changes"]
    assert change["step"] == 4 and change["trajectory"] == "changed"
    assert change["fields"]["data.crop_size"] == [[64, 64], [32, 32]]
    TrainConfig.load(run / "config.yaml")  # still a config file (`--config runs/x/config.yaml`)

    # the run goes on under the new config: the same flags again are no change, and the history stays
    assert main([*changed, "--max-steps", "8"]) == 2  # cosine: extending it is a change
    assert "optim.max_steps: 6 -> 8" in error_line(capsys)
    assert main(changed) == 0  # nothing left to train: the model is saved again
    assert yaml.safe_load((run / "config.yaml").read_text())["config_changes"] == [change]



def test_safe_changes_are_accepted_and_keep_the_trajectory(tiny_backbone, tmp_path):
    """A constant-with-warmup schedule does not depend on max_steps: a run extended from 3 to 6 steps, with other
    checkpointing, logging and data-loading settings, ends with the weights of a 6-step run."""
    data = SyntheticScenes(8, size=32, seed=0)

    def config(folder, **kw):
        values = dict(pretrained="unused", output_dir=str(tmp_path / folder), max_steps=6, batch_size=2,
                      learning_rate=1e-3, lr_scheduler="constant_with_warmup", lr_warmup_steps=2, checkpoint_every=3,
                      log_every=1, seed=0, log_with="none", resolution=32, class_names=list(SYNTHETIC_CLASSES))
        return train_config(**{**values, **kw})

    straight = trainer(config("straight"), fresh_pipe(tiny_backbone), data, show_progress=False).train()
    trainer(config("run", max_steps=3), fresh_pipe(tiny_backbone), data, show_progress=False).train()
    with pytest.raises(ConfigError, match=r"run\.seed: 0 -> 1"):  # the Python API checks too, before any step
        trainer(config("run", seed=1), fresh_pipe(tiny_backbone), data, show_progress=False).train(resume="latest")
    safe = dict(checkpoint_every=2, keep_checkpoints=3, log_every=2, num_workers=1, sample_every=5, cache_latents=True)
    resumed = trainer(config("run", **safe), fresh_pipe(tiny_backbone), data, show_progress=False).train(resume="latest")
    for name, value in straight.unet.state_dict().items():
        torch.testing.assert_close(resumed.unet.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)
    (change,) = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["config_changes"]
    assert change["step"] == 3 and change["trajectory"] == "kept"
    assert set(change["fields"]) == {"optim.max_steps", *(f"{SECTION_OF[k]}.{k}" for k in safe)}
    notes = [entry for entry in _log(tmp_path / "run") if "config_change" in entry]
    assert notes == [{"step": 3, "config_change": change["fields"], "trajectory": "kept"}]


SECTION_OF = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------------------------------ one writer, full disk
def _train_args(tiny_backbone, output: Path) -> list[str]:
    return ["train", "--pretrained", str(tiny_backbone), "--dataset", "synthetic", "--cfg-options", "data.num_scenes=8",
            "--crop-size", "32", "--batch-size", "2", "--max-steps", "6", "--checkpoint-every", "2",
            "--learning-rate", "1e-3", "--output", str(output)]


@pytest.fixture(scope="module")
def lone_run(tiny_backbone, tmp_path_factory):
    """The run of `_train_args`, alone and uninterrupted, on one thread (as the full-disk run)."""
    run = tmp_path_factory.mktemp("lone") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train_args(tiny_backbone, run)) == 0
    finally:
        torch.set_num_threads(threads)
    return final_weights(run)


def test_a_second_run_on_a_folder_in_use_stops_before_loading_the_model(tiny_backbone, tmp_path, capsys,
                                                                       monkeypatch):
    """`digseg train` stops before it builds the model; a Trainer built from Python is refused too."""
    run = tmp_path / "run"
    with lock_held_elsewhere(run, "TRAIN") as holder:
        before = _snapshot(run)
        monkeypatch.setattr("digseg.training.run.build_run", _not_reached)
        capsys.readouterr()
        assert main(_train_args(tiny_backbone, run)) == 2  # the second run (this process)
        line = error_line(capsys)
        assert line.startswith(f"error: run folder {run} is in use by another training run (pid {holder.pid} on host "
                               f"{socket.gethostname()}, started ") and line.endswith("train into another --output")
        assert _snapshot(run) == before  # it wrote nothing
        config = train_config(pretrained="unused", output_dir=str(run), resolution=32, log_with="none",
                              class_names=list(SYNTHETIC_CLASSES))
        with pytest.raises(DigsegError, match=f"in use by another training run \\(pid {holder.pid} "):
            trainer(config, fresh_pipe(tiny_backbone), SyntheticScenes(8, size=32, seed=0), show_progress=False)  # Python
        assert _snapshot(run) == before


def _not_reached(*args, **kwargs):
    raise AssertionError("a refused run went on to build its model")


def test_a_full_disk_during_a_checkpoint_write_loses_nothing(tiny_backbone, lone_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the lone run
    try:
        monkeypatch.setenv("DIGSEG_FAIL_AT", "checkpoint-4:weights")  # ENOSPC once step 4's weight files are written
        capsys.readouterr()
        assert main(_train_args(tiny_backbone, run)) == 2
        line = error_line(capsys)
        assert "No space left on device" in line and "step-00000004" in line and "--resume latest" in line, line
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]  # no .tmp-* left
        assert load_checkpoint(run / "checkpoints" / "step-00000002")[2]["step"] == 2
        assert not (run / "model_index.json").exists() and not (run / LOCK_FILE).exists()

        # space freed; the run that failed released its lock, and the files a SIGKILLed holder leaves block nothing
        monkeypatch.delenv("DIGSEG_FAIL_AT")
        with lock_held_elsewhere(run, "TRAIN"):
            pass
        assert (run / LOCK_FILE).is_file()
        assert main([*_train_args(tiny_backbone, run), "--resume", "latest"]) == 0
        assert not (run / LOCK_FILE).exists()
    finally:
        torch.set_num_threads(threads)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004", "step-00000006"]
    assert_same_weights(lone_run, final_weights(run))
