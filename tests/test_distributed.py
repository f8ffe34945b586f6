"""Two processes on CPU (gloo) against one: training weights (full fine-tuning and a LoRA adapter) and evaluation
metrics.

The 2-process runs are real subprocesses started by `accelerate launch` (training) and `torchrun` (evaluation,
prediction), as a user would start them, on the tiny backbone; the 1-process runs they are compared with run in this
process, with one thread as each launched process has (`cli_here`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
from training_helpers import (adapter_weights, cli_env, cli_here, final_weights, fresh_pipe, free_port,
                              max_weight_diff, relative_update_diff, start_weights)

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CPU = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=REPO)
    assert result.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
    return result


def _accelerate_2proc() -> list[str]:
    exe = shutil.which("accelerate")
    if exe is None:
        pytest.skip("the accelerate launcher is not on PATH")
    return [exe, "launch", "--config_file", str(ACCELERATE_CPU), "--main_process_port", str(free_port()),
            "-m", "digseg.cli"]


def _torchrun_2proc() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "digseg.cli"]


@pytest.fixture(scope="module")
def scenes_folder(tmp_path_factory) -> Path:
    return save_scenes_as_folder(SyntheticScenes(10, size=32, seed=3), tmp_path_factory.mktemp("scenes") / "data")


NO_PEFT = pytest.mark.skipif(find_spec("peft") is None, reason='peft is not installed (pip install -e ".[lora]")')


@pytest.mark.parametrize("objective, finetune", [("diffusion", "full"), ("one-step", "full"),
                                                 pytest.param("diffusion", "lora", marks=NO_PEFT)])
def test_two_processes_train_the_same_weights_as_one(tiny_backbone, scenes_folder, tmp_path, objective, finetune):
    (tmp_path / "run.yaml").write_text("optim: {lr_scheduler: constant, lr_warmup_steps: 0}\nrun: {log_every: 1}\n")
    lora = ["optim.finetune=lora", "optim.lora_rank=4"] if finetune == "lora" else []
    common = ["train", "--config", str(tmp_path / "run.yaml"), "--pretrained", str(tiny_backbone), "--dataset", "folder", "--data-root", str(scenes_folder),
              "--crop-size", "32", "--max-steps", "3", "--learning-rate", "1e-3", "--checkpoint-every", "2",
              "--cfg-options", f"model.objective={objective}", *lora]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli_here([*common, "--batch-size", "4", "--output", str(one)]) == 0
    _run([*_accelerate_2proc(), *common, "--batch-size", "2", "--output", str(two)])  # global batch 2 x 2 = 4

    if finetune == "lora":  # the adapter's tensors; the update is lora_B's, which starts at zero
        a, b = adapter_weights(one), adapter_weights(two)
        start = {k: torch.zeros_like(v) for k, v in a.items() if ".lora_B." in k}
    else:
        a, b, start = final_weights(one), final_weights(two), start_weights(tiny_backbone)
    moved = max((a[k].float() - start[k].float()).abs().max().item() for k in start)
    assert moved > 1e-3, "training did not change the weights; the comparison would be empty"
    # Adam's first steps move every weight by about lr * sign(g), so a weight whose gradient is near zero can move
    # differently when the two runs sum the batch in another order (float rounding; 7e-5 seen on an AMD EPYC, under
    # 1e-5 on an Intel Xeon; 4.2e-4 of a 3e-3 move for one weight of the one-step objective on the AMD EPYC, whose
    # per-sample gradients average to the full batch's to 4e-6: test_one_step checks that). So: the update as a whole
    # must agree to 1e-3 of its size, and no weight may be far off.
    relative = relative_update_diff(a, b, start)
    worst = max_weight_diff(a, b)
    assert relative < 1e-3, f"2-process update differs from the 1-process update by {relative:.2e} of its norm"
    bound = 0.2 if objective == "one-step" else 0.1
    assert worst < bound * moved, f"2-process weights differ from 1-process weights by {worst} (training moved them {moved})"
    # only the main process wrote: one log line per logged step, checkpoints from one writer
    steps = [json.loads(line)["step"] for line in (two / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


def test_two_process_eval_gives_exactly_the_single_process_metrics(tiny_backbone, scenes_folder, tmp_path):
    model = tmp_path / "model"  # an untrained model: what is compared is how the processes share the images
    fresh_pipe(tiny_backbone).save_pretrained(model)
    # a corrupt image: both runs must report and skip it the same way
    (scenes_folder.parent / "eval").mkdir(exist_ok=True)
    data = Path(shutil.copytree(scenes_folder, scenes_folder.parent / "eval" / "data", dirs_exist_ok=True))
    broken = sorted((data / "images").iterdir())[4]
    broken.write_bytes(b"not an image")
    common = ["eval", "--model", str(model), "--dataset", "folder", "--data-root", str(data), "--val-fraction", "1",
              "--ensemble-size", "2", "--steps", "2"]
    assert cli_here([*common, "--output", str(tmp_path / "one")]) == 0
    _run([*_torchrun_2proc(), *common, "--output", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one.pop("runtime")["num_processes"], two.pop("runtime")["num_processes"]) == (1, 2)
    for result in (one, two):
        result.pop("predictions")
        assert [Path(m.split()[-1]).name for m in result.pop("skipped_samples")] == [broken.stem + ".png"]
        assert result["num_images"] == 9 and len(result["prediction_skipped"]) == 1
        assert broken.name in result["prediction_skipped"][0]
    assert one == two
    pngs_one = sorted(p.name for p in (tmp_path / "one" / "predictions").iterdir())
    assert pngs_one == sorted(p.name for p in (tmp_path / "two" / "predictions").iterdir()) and len(pngs_one) == 9


def test_predict_under_two_processes_writes_the_files_of_one(tiny_backbone, tmp_path, capsys):
    """`torchrun --nproc_per_node 2 digseg predict`: each process predicts its share on its own device (here the
    CPU), the main process writes one summary.json and one report after both finished, and every file equals the
    single process's. A continued run (--skip-existing) with another process count keeps what is done."""
    import numpy as np
    from PIL import Image

    model = tmp_path / "model"
    fresh_pipe(tiny_backbone).save_pretrained(model)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(32, 48), (40, 40), (32, 48), (24, 56), (40, 40)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(photos / f"p{k}.png")
    (photos / "p5.png").write_bytes(b"broken")  # skipped by whichever process owns it, listed once
    common = ["predict", "--model", str(model), "--image", str(photos), "--ensemble-size", "2", "--steps", "2",
              "--device", "cpu", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli_here([*common, "--output", str(one)]) == 3  # the broken file: skipped, reported
    launched = _run([*_torchrun_2proc(), *common, "--output", str(two)])  # launched: 0, or torchrun reports a crash
    assert launched.stdout.count("wrote predictions for 5 image(s)") == 1 and "skipped 1 of 6" in launched.stdout

    files = lambda run: sorted(p.name for p in run.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert files(one) == files(two) and "index.html" in files(one) and len(files(one)) > 5 * 8
    for name in files(one):
        a, b = (run / name for run in (one, two))
        if name.endswith("_label.png"):
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)), err_msg=name)
        elif name.endswith(".png") or name.endswith(".jpg"):
            diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
            assert diff.max() <= 1, name  # float rounding of the model's sums, at most one grey level
        elif name == "summary.json":
            sa, sb = (json.loads(p.read_text()) for p in (a, b))
            assert (sa.pop("runtime")["num_processes"], sb.pop("runtime")["num_processes"]) == (1, 2)
            assert sa == sb and len(sa["images"]) == 5 and [s["name"] for s in sa["skipped"]] == ["p5.png"]
        elif name == "index.html":
            assert a.read_text().count('<figure class="entry"') == b.read_text().count('<figure class="entry"') == 5
        else:
            assert json.loads(a.read_text()) == json.loads(b.read_text()), name
    assert sorted(p.name for p in (two / ".digseg-predict").iterdir()) == ["records-00000.jsonl", "records-00001.jsonl"]

    # continued by one process: nothing is predicted again, the summary still covers every image
    capsys.readouterr()
    assert cli_here([*common, "--output", str(two), "--skip-existing"]) == 3
    out = capsys.readouterr().out
    assert "5 of 6 image(s) already finished" in out, out
    assert len(json.loads((two / "summary.json").read_text())["images"]) == 5
