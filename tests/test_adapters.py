"""Adapter folders on a loaded backbone: reload onto a fresh base gives identical outputs, several adapters switch
without reloading the U-Net (their conv_in, text pathway and classes with them), the base comes back, and
fuse_adapter writes a plain model folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from digseg import DiGSegPipeline
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.errors import DigsegError
from digseg.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from training_helpers import train_config, trainer

pytest.importorskip("peft")

OTHER_CLASSES = [f"other-{name}" for name in SYNTHETIC_CLASSES]


def _train(backbone, folder, seed, class_names, lr):
    pipe = DiGSegPipeline.from_backbone(backbone, class_names=list(SYNTHETIC_CLASSES))
    pipe.set_progress_bar_config(disable=True)
    config = train_config(pretrained=str(backbone), output_dir=str(folder), max_steps=3, batch_size=2,
                          learning_rate=lr, lr_warmup_steps=0, checkpoint_every=10, log_with="none", resolution=32,
                          seed=seed, class_names=class_names, finetune="lora", lora_rank=4, lora_alpha=8.0)
    return trainer(config, pipe, SyntheticScenes(4, size=32, seed=seed), show_progress=False).train()


@pytest.fixture(scope="module")
def adapters(tiny_backbone, tmp_path_factory):
    """Two trained adapters: (roads folder, its trained pipeline's output), (cells folder, output)."""
    root = tmp_path_factory.mktemp("adapters")
    roads = _train(tiny_backbone, root / "roads", 0, list(SYNTHETIC_CLASSES), 3e-3)
    roads_out = _predict(roads)
    cells = _train(tiny_backbone, root / "cells", 1, OTHER_CLASSES, 1e-2)
    return (root / "roads" / "adapter", roads_out), (root / "cells" / "adapter", _predict(cells))


IMAGE = (SyntheticScenes(1, size=32, seed=42)[0]["image"] + 1) / 2  # [3, 32, 32] in [0, 1]


def _predict(pipe):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(IMAGE, generator=torch.Generator().manual_seed(0), output_type="pt", max_probability_classes=None)
    return out.probabilities[0].clone(), out.class_names


def _base(tiny_backbone, **kwargs):
    pipe = DiGSegPipeline.from_base(tiny_backbone, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_adapter_folder_holds_exactly_the_trained_tensors(adapters):
    folder = adapters[0][0]
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["lora"] == {"rank": 4, "alpha": 8.0, "targets": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert config["class_names"] == list(SYNTHETIC_CLASSES) and config["processing_resolution"] == 32
    assert config["base"]["pretrained"].endswith("tiny-sd")
    from safetensors.torch import load_file

    keys = load_file(str(folder / WEIGHTS_FILE)).keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "conv_in", "text_pathway"}


def test_reload_onto_a_fresh_base_gives_identical_outputs(adapters, tiny_backbone):
    (roads, (want, names)), _ = adapters
    pipe = _base(tiny_backbone)
    assert pipe.load_adapter(roads, name="roads") == "roads"
    got, got_names = _predict(pipe)
    assert got_names == names
    assert torch.equal(got, want)


def test_several_adapters_switch_on_one_backbone_and_the_base_comes_back(adapters, tiny_backbone):
    (roads, (roads_out, _)), (cells, (cells_out, cells_names)) = adapters
    pipe = _base(tiny_backbone, class_names=["a", "b", "c"])
    base_out, base_names = _predict(pipe)
    unet = pipe.unet
    pipe.load_adapter(roads, name="roads")
    pipe.load_adapter(cells, name="cells")
    assert pipe.adapters == ["roads", "cells"] and pipe.active_adapter == "cells"
    assert torch.equal(_predict(pipe)[0], cells_out) and _predict(pipe)[1] == cells_names == OTHER_CLASSES
    for _ in range(2):
        pipe.set_adapter("roads")
        assert pipe.unet is unet and pipe.class_names == list(SYNTHETIC_CLASSES)
        assert torch.equal(_predict(pipe)[0], roads_out)
        pipe.set_adapter("cells")
        assert torch.equal(_predict(pipe)[0], cells_out)
        pipe.set_adapter(None)
        got, got_names = _predict(pipe)
        assert torch.equal(got, base_out) and got_names == base_names
    assert pipe.unet is unet
    with pytest.raises(DigsegError, match=r"no adapter named 'roadz' \(loaded: roads, cells\)"):
        pipe.set_adapter("roadz")
    with pytest.raises(DigsegError, match="an adapter named 'roads' is loaded already"):
        pipe.load_adapter(roads, name="roads")
    with pytest.raises(DigsegError, match="LoRA adapters loaded; fuse_adapter"):
        pipe.save_pretrained("unused")


def test_fuse_adapter_writes_a_plain_model_folder(adapters, tiny_backbone, tmp_path):
    (roads, (roads_out, names)), _ = adapters
    pipe = _base(tiny_backbone)
    pipe.load_adapter(roads, name="roads")
    pipe.fuse_adapter(tmp_path / "fused")
    assert pipe.active_adapter == "roads" and torch.equal(_predict(pipe)[0], roads_out)  # left as it was
    fused = DiGSegPipeline.from_pretrained(str(tmp_path / "fused"))
    assert not getattr(fused.unet, "peft_config", None)
    got, got_names = _predict(fused)
    assert got_names == names
    torch.testing.assert_close(got, roads_out, atol=1e-5, rtol=1e-4)
    with pytest.raises(DigsegError, match="no adapter is active"):
        _base(tiny_backbone).fuse_adapter()


def test_a_folder_that_is_no_adapter_is_refused_in_one_line(tiny_backbone, tmp_path):
    pipe = _base(tiny_backbone)
    with pytest.raises(DigsegError, match="is not a DiGSeg adapter folder") as caught:
        pipe.load_adapter(tmp_path)
    assert "\n" not in str(caught.value)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"format": "other"}))
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(DigsegError, match="not a DiGSeg adapter config"):
        pipe.load_adapter(tmp_path)
    assert pipe.adapters == [] and np.isfinite(1)


def test_predict_and_eval_with_adapters_on_the_command_line(adapters, tiny_backbone, tmp_path, capsys):
    from digseg.cli import main
    from digseg.data.synthetic import save_scenes_as_folder

    (roads, _), (cells, (_, cells_names)) = adapters
    folder = save_scenes_as_folder(SyntheticScenes(3, size=32, seed=3), tmp_path / "data")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(tiny_backbone), "--adapter", f"roads={roads}", "--adapter",
                 f"cells={cells}", "--use-adapter", "cells", "--image", str(folder / "images"), "--output", str(out),
                 "--outputs", "labels", "--no-progress"]) == 0
    images = json.loads((out / "summary.json").read_text())["images"]
    assert len(images) == 3 and all(list(scores) == cells_names for scores in images.values())  # cells' classes
    # several adapters and no choice, or a name not given: one line each, nothing predicted
    for extra, message in ((["--adapter", f"roads={roads}", "--adapter", f"cells={cells}"], "--use-adapter NAME"),
                           (["--adapter", f"roads={roads}", "--use-adapter", "cellz"], "no --adapter of that name")):
        assert main(["predict", "--model", str(tiny_backbone), *extra, "--image", str(folder / "images"),
                     "--output", str(tmp_path / "x"), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_backbone), "--adapter", str(roads), "--dataset", "folder", "--data-root",
                 str(folder), "--val-fraction", "1.0", "--output", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    assert "mIoU" in (tmp_path / "eval" / "metrics.json").read_text()
