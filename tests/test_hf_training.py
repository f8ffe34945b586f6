"""A `digseg train` run on an hf: dataset reporting to TensorBoard and MLflow (a tracker that runs offline, on a
local file store), its model card, `digseg eval` and `digseg train-mask-decoder` on the same data, and
`run.push_to_hub` (tested offline up to huggingface_hub's upload call)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.errors import ConfigError
from digseg.training.tracking import tracker_names
from hf_fixtures import CLASSES, write_hf_copies, write_pairs

pytest.importorskip("datasets", reason='hf: datasets need the datasets library: pip install -e ".[hf]"')
HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None  # the test extra installs mlflow-skinny

STEPS = 4


@pytest.fixture(scope="module")
def run(tiny_backbone, tmp_path_factory) -> dict:
    """One `digseg train` run: 4 steps on the hf: copy, validated at steps 2 and 4, logged to TensorBoard and
    MLflow (a file store in the test's folder) when it is installed."""
    root = tmp_path_factory.mktemp("hf-train")
    saved, _ = write_hf_copies(write_pairs(root / "pairs"), root)
    store = root / "mlruns"
    out = root / "run"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"file:{store}")
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database unless told a folder is fine
        assert main(["train", "--pretrained", str(tiny_backbone), "--dataset", f"hf:{saved}", "--crop-size", "32",
                     "--batch-size", "2", "--max-steps", str(STEPS), "--checkpoint-every", "2", "--learning-rate",
                     "1e-3", "--eval-every", "2", "--cfg-options", "run.eval_samples=2",
                     "run.log_with=tensorboard,mlflow" if HAVE_MLFLOW else "run.log_with=tensorboard",
                     "--output", str(out)]) == 0
    return {"out": out, "saved": saved, "store": store, "root": root}


@pytest.mark.skipif(not HAVE_MLFLOW, reason="the tracker test runs MLflow offline: pip install mlflow-skinny")
def test_mlflow_gets_loss_validation_scores_and_sample_images(run, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=f"file:{run['store']}")
    experiment = client.get_experiment_by_name("digseg")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.data.params["data.dataset"] == f"hf:{run['saved']}"
    loss = client.get_metric_history(found.info.run_id, "train/loss")
    miou = client.get_metric_history(found.info.run_id, "val/mIoU")
    logged = [json.loads(line) for line in (run["out"] / "log.jsonl").read_text().splitlines()]
    assert [(m.step, round(m.value, 6)) for m in loss] == [(e["step"], round(e["loss"], 6)) for e in logged if "loss" in e]
    assert [(m.step, round(m.value, 6)) for m in miou] == [(e["step"], round(e["val/mIoU"], 6))
                                                            for e in logged if "val/mIoU" in e]
    assert [m.step for m in miou] == [2, 4]
    images = [a.path for a in client.list_artifacts(found.info.run_id, "images")]
    assert any("samples~prediction" in p and "step+4" in p and p.endswith(".png") for p in images), images
    assert list((run["out"] / "logs").rglob("events.out.tfevents.*"))  # and TensorBoard, as before


def test_the_saved_model_has_a_model_card_and_still_loads(run, tiny_backbone):
    card = ModelCard.load(run["out"] / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "digseg" and meta["pipeline_tag"] == "image-segmentation"
    facts = meta["digseg"]
    assert facts["base_model"] == str(tiny_backbone)
    assert facts["datasets"] == [f"hf:{run['saved']}"]
    assert facts["training"]["steps"] == STEPS and facts["training"]["objective"] == "diffusion"
    assert facts["training"]["crop_size"] == [32, 32]
    assert facts["model"]["classes"] == CLASSES and facts["model"]["processing_resolution"] > 0
    logged = [json.loads(line) for line in (run["out"] / "log.jsonl").read_text().splitlines()]
    last = [e for e in logged if "val/mIoU" in e][-1]
    assert facts["validation"]["step"] == STEPS and facts["validation"]["scores"]["val/mIoU"] == last["val/mIoU"]
    assert facts["validation"]["best"]["metric"] == "mIoU"
    text = card.text
    for words in ("## Model", "| Classes | 3: background, disc, bar |", "## Training", "| Steps | 4 |", "## Validation",
                  f"digseg eval --dataset hf:{run['saved']} --split val --model {run['out']}",
                  f'DiGSegPipeline.from_pretrained("{run["out"]}")', "the model's processing resolution, whole image"):
        assert words in text, words
    pipe = DiGSegPipeline.from_pretrained(run["out"])
    assert pipe.config.class_names == CLASSES
    assert pipe.config.training_data == {"dataset": f"hf:{run['saved']}", "hf_split": "train"}  # digseg.data.model_data


def test_eval_and_the_mask_decoder_trainer_read_the_hf_dataset(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--dataset", f"hf:{run['saved']}", "--model", str(run["out"]), "--output", str(out),
                 "--batch-size", "3"]) == 0
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["dataset"] == f"hf:{run['saved']}" and scores["split"] == "val" and scores["num_images"] == 3
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["000000.png", "000001.png",
                                                                                    "000002.png"]
    assert "warning" not in capsys.readouterr().err
    assert main(["eval", "--dataset", f"hf:{run['saved']}", "--model", str(run["out"]), "--split", "train",
                 "--output", str(tmp_path / "train"), "--batch-size", "4"]) == 0
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())["num_images"]
    assert f"warning: {trained} of the {trained} images scored were in the model's training split" in capsys.readouterr().err
    decoded = tmp_path / "with-decoder"
    assert main(["train-mask-decoder", "--model", str(run["out"]), "--output", str(decoded), "--dataset",
                 f"hf:{run['saved']}", "--max-steps", "2", "--batch-size", "2", "--num-samples", "2"]) == 0
    facts = ModelCard.load(decoded / "README.md").data.to_dict()["digseg"]
    assert facts["model"]["light_mask_decoder"] and facts["mask_decoder_training"]["steps"] == 2
    assert facts["mask_decoder_training"]["dataset"] == f"hf:{run['saved']}"
    assert facts["training"]["steps"] == STEPS  # the trained model's facts are kept
    assert DiGSegPipeline.from_pretrained(decoded).mask_decoder is not None


def test_push_to_hub_uploads_the_model_folder_with_its_card(run, tiny_backbone, tmp_path, monkeypatch):
    """A one-step run continued from the trained model, pushed: the card keeps the base checkpoint and data."""
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs, self.token)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        calls["upload"] = dict(kwargs, card=(folder / "README.md").read_text(),
                               files=sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # huggingface_hub's own token lookup
    out = tmp_path / "one-step"
    assert main(["train", "--pretrained", str(run["out"]), "--dataset", f"hf:{run['saved']}", "--crop-size", "32",
                 "--batch-size", "2", "--max-steps", "1", "--output", str(out),
                 "--cfg-options", "data.augmentation=false", "model.objective=one-step", "run.log_with=none",
                 "run.push_to_hub=someone/digseg-tiny", "run.hub_private=true"]) == 0
    repo, kwargs, _ = calls["create"]
    assert repo == "someone/digseg-tiny" and kwargs["private"] is True
    upload = calls["upload"]
    assert upload["repo_id"] == "someone/digseg-tiny" and Path(upload["folder_path"]) == out
    assert 'DiGSegPipeline.from_pretrained("someone/digseg-tiny")' in upload["card"]
    assert "one-step (one deterministic pass" in upload["card"]  # a one-step model's card says so
    facts = ModelCard.load(out / "README.md").data.to_dict()["digseg"]
    assert facts["base_model"] == str(tiny_backbone) and facts["continued_from"] == str(run["out"])
    assert facts["datasets"] == [f"hf:{run['saved']}"] and "validation" not in facts
    patterns = upload["allow_patterns"]
    assert {"model_index.json", "README.md", "unet/*", "vae/*", "text_pathway/*", "scheduler/*"} <= set(patterns)
    assert not any(p.startswith(("checkpoints", "logs")) for p in patterns)
    assert any(f.startswith("checkpoints/") for f in upload["files"])  # present locally, but not uploaded


def test_tracker_names_and_bad_push_targets(tiny_backbone, tmp_path, capsys, monkeypatch):
    assert tracker_names("tensorboard, mlflow") == ["tensorboard", "mlflow"] and tracker_names(["all"]) == ["all"]
    assert tracker_names("none") == []
    with pytest.raises(ConfigError, match="trackers accelerate supports"):
        tracker_names("tensorbord")
    args = ["train", "--pretrained", str(tiny_backbone), "--output", str(tmp_path / "x"), "--max-steps", "1"]
    monkeypatch.setenv("HF_TOKEN", "t")
    assert main([*args, "--cfg-options", "run.push_to_hub=not a repo id"]) == 2
    assert "is not a Hub repository id" in capsys.readouterr().err
    assert main([*args, "--cfg-options", "run.log_with=wandb,nope"]) == 2
    assert "trackers accelerate supports" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything ran
