"""Sharded training (`run.sharding: fsdp`, FSDP2) with 2 CPU processes (gloo), as a user starts it.

One uninterrupted sharded run is compared with the DDP run of the same settings, and is the reference of a sharded
run killed with SIGKILL after its step-2 checkpoint and resumed (by 2 processes, and by 1 process with the same
global batch). A negative control resumes from the same checkpoint with its AdamW moments zeroed: it must end
elsewhere, so the exact-resume checks can fail. EMA and gradient accumulation are on: the saved models hold the EMA
weights, so the sharded EMA's checkpointing is checked too.

Seen on an AMD EPYC (2 cores): sharded vs DDP 3.3e-5 max abs (2.6e-5 of the update's norm; training moved weights by
4.5e-3); resumed by 2 processes: identical; resumed by 1 process: 1.2e-7; without the moments: 4.4e-3 (0.67 of the
update's norm).
The test marked `gpu` runs the same path in one process on CUDA (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
from digseg.errors import ConfigError, DigsegError
from training_helpers import (cli_env, final_weights, free_port, max_weight_diff, relative_update_diff, start_weights,
                              train_config, trainer)

REPO = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("DIGSEG_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)  # the `gpu` test
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or sys.platform == "win32",
                                reason="needs torch.distributed and SIGKILL")
STEPS, KILLED_AT = 5, 3  # the killed run's newest checkpoint is step 2 (--checkpoint-every 2)
RESUME_BOUND = 1e-6  # max abs weight difference of a resumed run, as in tests/test_resume_kill.py


def _train(*runs: tuple[list[str], int, str | None]) -> list[subprocess.CompletedProcess]:
    """`digseg train` runs (args, processes, DIGSEG_KILL_AT or None), all at once (most of a tiny run is start-up and
    waiting on the other process): 1 process, or N under torchrun (gloo on CPU)."""
    procs = []
    for args, processes, kill_at in runs:
        launcher = [sys.executable]
        if processes > 1:
            launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
                         "127.0.0.1", "--master_port", str(free_port())]
        procs.append(subprocess.Popen([*launcher, "-m", "digseg.cli", "train", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=cli_env(kill_at), cwd=REPO))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _ok(*results: subprocess.CompletedProcess) -> None:
    for result in results:
        assert result.returncode == 0, f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"


@pytest.fixture(scope="module")
def runs(tiny_backbone, tmp_path_factory) -> dict:
    """The DDP run, the uninterrupted sharded run, and the sharded run killed after step 3 (2 processes each)."""
    tmp = tmp_path_factory.mktemp("sharded")
    data = save_scenes_as_folder(SyntheticScenes(8, size=32, seed=5), tmp / "data")
    (tmp / "run.yaml").write_text("optim: {lr_scheduler: constant, lr_warmup_steps: 0}\n"
                                  "run: {log_every: 1, sample_every: 0, log_with: none}\n")
    common = ["--config", str(tmp / "run.yaml"), "--pretrained", str(tiny_backbone), "--dataset", "folder",
              "--data-root", str(data), "--crop-size", "32", "--max-steps", str(STEPS), "--checkpoint-every", "2",
              "--learning-rate", "1e-3", "--cfg-options", "optim.use_ema=true", "optim.gradient_accumulation_steps=2"]
    per_process = [*common, "--batch-size", "1"]  # 2 processes x 1 = a global batch of 2
    ddp, sharded, killed = tmp / "ddp", tmp / "sharded", tmp / "killed"
    *done, result = _train(([*per_process, "--output", str(ddp)], 2, None),
                           ([*per_process, "--cfg-options", "run.sharding=fsdp", "--output", str(sharded)], 2, None),
                           ([*per_process, "--cfg-options", "run.sharding=fsdp", "--output", str(killed)], 2, f"step-{KILLED_AT}"))
    _ok(*done)
    assert result.returncode != 0 and "SIGKILL" in result.stderr, result.stderr[-3000:]
    return dict(common=common, per_process=per_process, ddp=ddp, sharded=sharded, killed=killed, tmp=tmp)


def test_sharded_training_follows_the_ddp_run(runs, tiny_backbone):
    ddp, sharded, start = final_weights(runs["ddp"]), final_weights(runs["sharded"]), start_weights(tiny_backbone)
    moved = max((ddp[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3, "training did not move the weights: the comparison would be empty"
    # the same bound as DDP against one process (tests/test_distributed.py): the update as a whole agrees to 1e-3 of
    # its norm (gradients are averaged by a reduce-scatter instead of an all-reduce: another summation order)
    relative = relative_update_diff(ddp, sharded, start)
    assert relative < 1e-3, f"the sharded update differs from the DDP update by {relative:.2e} of its norm"
    assert max_weight_diff(ddp, sharded) < 0.1 * moved

    # the checkpoint holds each process's shards and no whole-weight files; the final model is whole
    checkpoint = runs["sharded"] / "checkpoints" / f"step-{STEPS:08d}"
    assert sorted(p.name for p in checkpoint.iterdir()) == ["shards", "trainer_state.json"]
    shards = sorted(p.name for p in (checkpoint / "shards").iterdir())
    assert shards == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    with safe_open(str(checkpoint / "shards" / shards[1]), "pt") as f:
        keys = set(f.keys())
    assert {"model.unet.conv_in.weight", "optim.unet.conv_in.weight.exp_avg", "optim.unet.conv_in.weight.exp_avg_sq",
            "ema.unet.conv_in.weight"} <= keys
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["sharding"], state["launch"]["num_processes"], state["step"]) == ("fsdp", 2, STEPS)
    from digseg import DiGSegPipeline

    pipe = DiGSegPipeline.from_pretrained(runs["sharded"])  # one process, whole weights
    assert torch.equal(pipe.unet.conv_in.weight.detach(), sharded["unet.conv_in.weight"])


def _zero_moments(checkpoint: Path) -> None:
    """Resume without the optimizer moments: AdamW's moments and step counts zeroed in every shard file, which is
    exactly a fresh AdamW (what a checkpoint without them would restart from)."""
    for file in sorted((checkpoint / "shards").iterdir()):
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata()
            tensors = {k: torch.zeros_like(f.get_tensor(k)) if k.startswith("optim.") else f.get_tensor(k)
                       for k in f.keys()}
        save_file(tensors, str(file), metadata=metadata)


def test_killed_sharded_run_resumes_on_the_uninterrupted_trajectory(runs, tiny_backbone):
    killed, tmp = runs["killed"], runs["tmp"]
    checkpoints = killed / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000002"] and not (killed / "unet").exists()
    single = tmp / "single"  # the same checkpoint, resumed by one process with the same global batch
    shutil.copytree(killed, single)
    negative = tmp / "negative"  # ... and resumed without its AdamW moments
    shutil.copytree(killed, negative)
    _zero_moments(negative / "checkpoints" / "step-00000002")

    one_process = [*runs["common"], "--batch-size", "2", "--cfg-options", "run.sharding=fsdp", "--resume", "latest"]
    _ok(*_train(([*runs["per_process"], "--cfg-options", "run.sharding=fsdp", "--output", str(killed), "--resume", "latest"], 2, None),
                ([*one_process, "--output", str(single)], 1, None),
                ([*one_process, "--output", str(negative)], 1, None)))
    want = final_weights(runs["sharded"])
    worst = max_weight_diff(want, final_weights(killed))
    assert worst < RESUME_BOUND, f"the resumed sharded run ends {worst} away from the uninterrupted one"
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))

    got, restarted, start = final_weights(single), final_weights(negative), start_weights(tiny_backbone)
    # resharded from 2 processes to 1: the same trajectory up to the summation order of the gradient average (the
    # bound of test_sharded_training_follows_the_ddp_run)
    relative = relative_update_diff(want, got, start)
    assert relative < 1e-3, f"resumed by 1 process, the run ends {relative:.2e} (of the update) away"
    # the negative control: the same resume without the moments ends far away, so the checks above can fail
    gap = max_weight_diff(got, restarted)
    assert gap > 1000 * RESUME_BOUND, f"resuming without the AdamW moments changed the weights by only {gap}"
    assert relative_update_diff(want, restarted, start) > 1e-2


def test_a_nan_gradient_on_one_process_is_skipped_by_every_process(runs, monkeypatch):
    """NaN gradients at step 3 on process 1 only: DDP and FSDP reduce them, so both processes skip that step (no
    hang, no update), log it, and finish; nothing non-finite is written."""
    tmp = runs["tmp"]
    args = [*runs["per_process"], "--max-steps", "4", "--output"]
    monkeypatch.setenv("DIGSEG_NAN_GRADIENT_AT", "2@1")  # the step from w_2, i.e. step 3
    _ok(*_train(([*args, str(tmp / "nan-ddp")], 2, None), ([*args, str(tmp / "nan-fsdp"), "--cfg-options", "run.sharding=fsdp"], 2, None)))
    for run in (tmp / "nan-ddp", tmp / "nan-fsdp"):
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        assert [entry["step"] for entry in log if "skipped_step" in entry] == [3], run
        for file in run.rglob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys()), file


def test_sharding_settings_it_cannot_honour_are_refused(runs, tiny_pipe, tmp_path):
    """fp16, 8-bit AdamW and validation under sharding, and resuming a sharded checkpoint without sharding: one-line
    errors before training."""
    dataset = SyntheticScenes(4, size=32, seed=0)
    base = dict(resolution=32, max_steps=2, batch_size=1, output_dir=str(tmp_path / "run"), log_with="none")
    for extra, message in ((dict(mixed_precision="fp16"), "fp16"), (dict(optimizer="adamw8bit"), "adamw8bit"),
                           (dict(eval_every=1), "eval_every")):
        with pytest.raises(ConfigError, match=message):
            trainer(train_config(**base, sharding="fsdp", **extra), tiny_pipe, dataset, val_dataset=dataset)
    unsharded = trainer(train_config(**base), tiny_pipe, dataset)
    with pytest.raises(DigsegError, match="resume it with --cfg-options run.sharding=fsdp"):
        unsharded.load_checkpoint(runs["sharded"] / "checkpoints" / f"step-{STEPS:08d}")


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE is None, reason="no CUDA device (DIGSEG_TEST_DEVICE=cpu runs it on the CPU)")
def test_sharded_training_on_the_gpu(tiny_backbone, tmp_path):
    """One process proves the path on CUDA: FSDP2 over a NCCL group of one, DCP writing and reading device tensors,
    bf16 autocast. A run killed after its step-2 checkpoint and resumed ends where the uninterrupted run ends (up to
    the GPU's nondeterministic kernels), and the saved model loads whole."""
    data = save_scenes_as_folder(SyntheticScenes(8, size=32, seed=5), tmp_path / "data")
    (tmp_path / "run.yaml").write_text("run: {sample_every: 0, log_with: none}\n")
    common = ["--config", str(tmp_path / "run.yaml"), "--pretrained", str(tiny_backbone), "--dataset", "folder",
              "--data-root", str(data), "--crop-size", "32", "--max-steps", "4", "--checkpoint-every", "2",
              "--learning-rate", "1e-3", "--batch-size", "2", "--cfg-options", "optim.use_ema=true", "--dtype", "bf16",
              "--cfg-options", "run.sharding=fsdp"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done, dead = _train(([*common, "--output", str(reference)], 1, None),
                        ([*common, "--output", str(killed)], 1, "step-3"))
    _ok(done)
    assert dead.returncode == -9 and (killed / "checkpoints" / "step-00000002" / "shards").is_dir(), dead.stderr[-3000:]
    _ok(*_train(([*common, "--output", str(killed), "--resume", "latest"], 1, None)))
    want, got, start = final_weights(reference), final_weights(killed), start_weights(tiny_backbone)
    relative = relative_update_diff(want, got, start)
    assert relative < 1e-2, f"the resumed run ends {relative:.2e} (of the update) away from the uninterrupted one"
    from digseg import DiGSegPipeline

    assert DiGSegPipeline.from_pretrained(killed).unet.conv_in.weight.shape[1] == 8
