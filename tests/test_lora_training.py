"""`optim.finetune: lora`: the U-Net frozen but for LoRA matrices and conv_in, the text pathway in full; checkpoints
of the trainable tensors only, exact resume (in process and after SIGKILL), validation with checkpoints/best/, the
non-finite guard, and the run's adapter folder."""

from __future__ import annotations

import shutil
import signal
import sys

import pytest
import torch

from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes, save_scenes_as_folder
from digseg.errors import ConfigError, DigsegError
from digseg.models.adapters import CONFIG_FILE
from digseg.training.checkpoint import list_checkpoints, load_checkpoint
from digseg.training.divergence import nan_gradient
from training_helpers import (adapter_weights, assert_same_weights, cli_process, fresh_pipe, train_config,
                              trainer)

pytest.importorskip("peft")


def _config(tmp_path, **kw):
    base = dict(pretrained="unused", output_dir=str(tmp_path / "run"), max_steps=4, batch_size=2, learning_rate=1e-3,
                lr_warmup_steps=0, checkpoint_every=2, keep_checkpoints=2, log_every=2, seed=0, log_with="none",
                resolution=32, class_names=list(SYNTHETIC_CLASSES), finetune="lora", lora_rank=4)
    base.update(kw)
    return train_config(**base)


def test_lora_trains_the_lora_conv_in_and_pathway_and_saves_an_adapter(tiny_backbone, tmp_path):
    pipe = fresh_pipe(tiny_backbone)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pathway_before = {k: v.clone() for k, v in pipe.text_pathway.state_dict().items()}
    tr = trainer(_config(tmp_path), pipe, SyntheticScenes(6, size=32), show_progress=False)
    names = [n for n, p in tr.pipe.unet.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n or n.startswith("conv_in.") for n in names)
    assert {"conv_in.weight", "conv_in.bias"} <= set(names)
    trained = tr.train()
    after = trained.unet.state_dict()
    for key, value in before.items():  # the frozen backbone did not move (peft renames a wrapped layer's weights)
        now = after.get(key, after.get(key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")))
        assert now is not None, key
        if key.startswith("conv_in."):
            assert not torch.equal(now, value), key
        else:
            assert torch.equal(now, value), key
    assert any(not torch.equal(v, trained.text_pathway.state_dict()[k]) for k, v in pathway_before.items())
    run = tmp_path / "run"
    assert not (run / "model_index.json").exists() and not (run / "unet").exists()
    tensors = adapter_weights(run)
    assert {k.split(".")[0] for k in tensors} == {"unet", "conv_in", "text_pathway"}
    assert all(".lora_" in k for k in tensors if k.startswith("unet."))
    assert (run / "adapter" / CONFIG_FILE).is_file() and (run / "adapter" / "README.md").is_file()
    # a checkpoint holds the trainable U-Net tensors only
    weights, optimizer, _ = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])
    assert sorted(weights["unet"]) == sorted(names)


@pytest.mark.parametrize("use_ema", [False, True])
def test_lora_resume_continues_the_same_run(tiny_backbone, tmp_path, use_ema):
    data = SyntheticScenes(6, size=32)
    trainer(_config(tmp_path / "a", use_ema=use_ema), fresh_pipe(tiny_backbone), data, show_progress=False).train()
    resumed_dir = tmp_path / "b" / "run"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "run" / "checkpoints" / "step-00000002",
                    resumed_dir / "checkpoints" / "step-00000002")
    trainer(_config(tmp_path / "b", use_ema=use_ema), fresh_pipe(tiny_backbone), data,
            show_progress=False).train(resume="latest")
    assert_same_weights(adapter_weights(tmp_path / "a" / "run"), adapter_weights(resumed_dir), "the straight run")


def test_a_full_checkpoint_does_not_resume_a_lora_run(tiny_backbone, tmp_path):
    data = SyntheticScenes(4, size=32)
    trainer(_config(tmp_path, finetune="full", max_steps=2), fresh_pipe(tiny_backbone), data, show_progress=False).train()
    with pytest.raises(DigsegError, match=r"does not fit this run's model: the LoRA run's U-Net tensors differ: "
                                          r"missing \S+lora_\S+ \(\d+ missing, \d+ unexpected\)"):
        trainer(_config(tmp_path, max_steps=3), fresh_pipe(tiny_backbone), data,
                show_progress=False).train(resume="latest", allow_config_change=True)


def test_lora_step_with_non_finite_gradients_is_skipped(tiny_backbone, tmp_path):
    tr = trainer(_config(tmp_path, max_steps=3, checkpoint_every=1), fresh_pipe(tiny_backbone), SyntheticScenes(4, size=32),
                 show_progress=False)
    loss_of, seen = tr._loss, {}

    def loss(batch, gen):
        seen[tr.step] = [p.detach().clone() for p in tr.params]
        value = loss_of(batch, gen)
        return nan_gradient(value) if tr.step == 1 else value

    tr._loss = loss
    tr.train()
    assert tr.guard.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(seen[1], seen[2]))


def test_lora_validation_keeps_the_best_step(tiny_backbone, tmp_path):
    data = SyntheticScenes(6, size=32, seed=1)
    tr = trainer(_config(tmp_path, eval_every=2, eval_samples=2), fresh_pipe(tiny_backbone), data, show_progress=False,
                 val_dataset=SyntheticScenes(2, size=32, seed=9))
    tr.train()
    best = tmp_path / "run" / "checkpoints" / "best"
    weights, _, state = load_checkpoint(best)
    assert state["best"]["step"] in (2, 4)
    assert all(".lora_" in k or k.startswith("conv_in.") for k in weights["unet"])


@pytest.mark.parametrize("overrides, message", [
    (dict(finetune="half"), "optim.finetune must be one of full, lora"),
    (dict(lora_rank=0), "optim.lora_rank must be >= 1"),
    (dict(lora_alpha=-1.0), "optim.lora_alpha must be > 0"),
    (dict(lora_targets=[]), "optim.lora_targets must list module names"),
    (dict(lora_targets=["to_q", "conv_in"]), "conv_in trains in full"),
    (dict(sharding="fsdp"), "optim.finetune lora with run.sharding fsdp is not supported"),
])
def test_bad_lora_settings_are_refused_in_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _config(tmp_path, **overrides)
    assert "\n" not in str(caught.value)


def test_lora_targets_that_match_nothing_are_refused(tiny_backbone, tmp_path):
    with pytest.raises(DigsegError, match=r"optim.lora_targets \['no_such_layer'\]") as caught:
        trainer(_config(tmp_path, lora_targets=["no_such_layer"]), fresh_pipe(tiny_backbone), SyntheticScenes(2, size=32),
                show_progress=False)
    assert "\n" not in str(caught.value)



@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_lora_sigkill_then_resume_gives_the_uninterrupted_adapter(tiny_backbone, tmp_path):
    data = save_scenes_as_folder(SyntheticScenes(6, size=32, seed=5), tmp_path / "data")
    common = ["--pretrained", str(tiny_backbone), "--dataset", "folder", "--data-root", str(data), "--crop-size", "32",
              "--batch-size", "2", "--max-steps", "4", "--checkpoint-every", "2", "--learning-rate", "1e-3",
              "--cfg-options", "optim.finetune=lora", "optim.lora_rank=4", "optim.lora_targets=[to_q,to_v,conv1]"]
    reference, run = tmp_path / "reference", tmp_path / "killed"
    result = cli_process(["train", *common, "--output", str(reference)])
    assert result.returncode == 0, result.stderr[-3000:]
    result = cli_process(["train", *common, "--output", str(run)], kill_at="checkpoint-4:weights")
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not (run / "adapter").exists()
    result = cli_process(["train", *common, "--output", str(run), "--resume", "latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    want = adapter_weights(reference)
    assert any(".conv1.lora_A" in k for k in want)  # ResNet convolutions adapted too
    assert_same_weights(want, adapter_weights(run), "the uninterrupted run")


def test_lora_with_gradient_checkpointing_trains_the_lora(tiny_backbone, tmp_path):
    trainer(_config(tmp_path, max_steps=2, gradient_checkpointing=True), fresh_pipe(tiny_backbone),
            SyntheticScenes(4, size=32), show_progress=False).train()
    lora_b = {k: v for k, v in adapter_weights(tmp_path / "run").items() if ".lora_B." in k}
    assert lora_b and all(v.abs().max() > 0 for v in lora_b.values())  # lora_B starts at zero: gradients reached it
