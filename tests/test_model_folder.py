"""Model folders are data: `DiGSegPipeline.from_pretrained` loads only the components digseg writes, runs no code
from a folder, imports no module a folder names, and refuses non-finite trained weights, in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.errors import DigsegError
from digseg.pipelines.model_folder import COMPONENTS, check_model_index
from training_helpers import error_line


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_backbone):
    from digseg.data.synthetic import SYNTHETIC_CLASSES

    folder = tmp_path_factory.mktemp("model") / "model"
    DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES)).save_pretrained(folder)
    return folder


def tampered(saved_model, tmp_path, **entries):
    """A copy of the saved model whose model_index.json has `entries` set."""
    folder = tmp_path / "tampered"
    shutil.copytree(saved_model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **entries}))
    return folder


def refusal(folder) -> str:
    with pytest.raises(DigsegError) as info:
        DiGSegPipeline.from_pretrained(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_the_allow_list_is_the_pipelines_components(saved_model):
    pipe = DiGSegPipeline.from_pretrained(saved_model)  # the untampered folder loads
    assert set(pipe.components) == set(COMPONENTS)
    index = json.loads((saved_model / "model_index.json").read_text())
    assert index["text_pathway"] == ["digseg.models.text", "TextPathway"] and index["mask_decoder"] == [None, None]


def test_a_module_named_by_the_folder_is_never_imported(saved_model, tmp_path, monkeypatch):
    probe = tmp_path / "probe"
    probe.mkdir()
    marker = tmp_path / "imported"
    (probe / "digseg_evil_probe.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(probe))
    assert "this" not in sys.modules and "digseg_evil_probe" not in sys.modules
    for key, entry in [("unet", ["digseg_evil_probe", "Evil"]), ("text_pathway", ["this", "TextPathway"]),
                       ("vae", ["subprocess", "Popen"])]:
        message = refusal(tampered(saved_model, tmp_path / key, **{key: entry}))
        assert f'entry "{key}" names {json.dumps(entry)}, which digseg does not load' in message
    assert "this" not in sys.modules and "digseg_evil_probe" not in sys.modules and not marker.exists()


@pytest.mark.parametrize("entries, named", [
    ({"unet": ["diffusers", "StableDiffusionPipeline"]}, '"unet" names ["diffusers", "StableDiffusionPipeline"]'),
    ({"text_encoder": ["transformers", "AutoModel"]}, '"text_encoder" names ["transformers", "AutoModel"]'),
    ({"text_pathway": [None, None]}, '"text_pathway" names [null, null]'),  # not optional
    ({"scheduler": "DDIMScheduler"}, '"scheduler" names "DDIMScheduler"'),
    ({"extra": ["os", "system"]}, '"extra" names ["os", "system"]'),
    ({"_class_name": ["pipeline", "DiGSegPipeline"]}, "_class_name is ['pipeline', 'DiGSegPipeline']"),
    ({"_class_name": "StableDiffusionPipeline"}, "_class_name is 'StableDiffusionPipeline'"),
])
def test_entries_digseg_does_not_write_are_refused(saved_model, tmp_path, entries, named):
    assert named in refusal(tampered(saved_model, tmp_path, **entries))


def test_settings_and_absent_optional_components_are_data():
    index = {"_class_name": "DiGSegPipeline", "class_names": ["road", "sky"], "backbone": {"pretrained": "x"},
             **{name: list(pair) for name, pair in COMPONENTS.items()}, "text_encoder": [None, None]}
    check_model_index(index, "m", DiGSegPipeline)  # a two-class list is a setting, not a component


def test_python_files_in_a_model_folder_are_refused(saved_model, tmp_path):
    folder = tampered(saved_model, tmp_path)
    (folder / "unet" / "diffusers.py").write_text("raise SystemExit('ran')\n")
    assert "holds code (unet/diffusers.py)" in refusal(folder)
    with pytest.raises(DigsegError, match="custom_pipeline"):
        DiGSegPipeline.from_pretrained(saved_model, custom_pipeline="pipeline")


def test_non_finite_unet_weights_are_refused(saved_model, tmp_path):
    folder = tampered(saved_model, tmp_path)
    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(file))
    weights["conv_in.weight"][0, 0, 0, 0] = float("nan")
    weights["conv_out.bias"][:2] = float("inf")
    save_file(weights, str(file), metadata={"format": "pt"})
    message = refusal(folder)
    assert "unet holds 3 non-finite value(s)" in message and "first in conv_in.weight, 2 tensor(s)" in message


def test_cli_refuses_a_tampered_folder_in_one_line(saved_model, tmp_path, capsys):
    folder = tampered(saved_model, tmp_path, unet=["subprocess", "Popen"])
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    args = ["predict", "--model", str(folder), "--image", str(tmp_path / "x.png"), "--prompt", "cup",
            "--output", str(tmp_path / "out")]
    assert main(args) == 2
    assert 'entry "unet" names ["subprocess", "Popen"]' in error_line(capsys)
    result = subprocess.run([sys.executable, "-m", "digseg.cli", *args], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[-1].startswith("error: ") and 'entry "unet"' in lines[-1] and not (tmp_path / "out").exists()


def test_a_hub_snapshot_is_checked_before_loading(saved_model, tmp_path):
    """A hub id resolves to its snapshot in the Hugging Face cache (offline in tests) and is checked there."""
    sha = "0" * 40
    repo = tmp_path / "cache" / "models--org--tiny"
    shutil.copytree(saved_model, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    pipe = DiGSegPipeline.from_pretrained("org/tiny", cache_dir=str(tmp_path / "cache"))
    assert torch.isfinite(pipe.unet.conv_in.weight).all()
    (repo / "snapshots" / sha / "pipeline.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(DigsegError, match=r"model folder org/tiny \(snapshot .*\) holds code \(pipeline.py\)"):
        DiGSegPipeline.from_pretrained("org/tiny", cache_dir=str(tmp_path / "cache"))
