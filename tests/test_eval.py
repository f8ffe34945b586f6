"""`digseg eval`: scoring label PNGs by metric kind (hand-computed), skipping bad samples, the two CLI forms."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.cli import main
from digseg.data.base import DATASETS, MetricKind, Sample, SegmentationDataset, register_dataset
from digseg.data.registry import dataset_names
from digseg.data.synthetic import SYNTHETIC_CLASSES
from digseg.data.io import save_label_png
from digseg.evaluation.dataset_eval import SUMMARY_COLUMNS, score_predictions, search_threshold
from digseg.errors import DigsegError
from digseg.evaluation.estep import EStep, evaluate_binary
from training_helpers import miou_by_hand


class Toy(SegmentationDataset):
    """root/images/<stem>.png + root/labels/<stem>.png, values = class ids (test-only reader)."""

    name = "toy"
    class_names = ["background", "cat", "dog"]
    splits = {"val": "."}

    def find_samples(self):
        return [Sample(p.stem, p, self.root / "labels" / p.name) for p in sorted((self.root / "images").glob("*.png"))]


def _write(root, labels: dict[str, np.ndarray], preds: dict[str, np.ndarray] | None = None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "preds").mkdir()
    for stem, label in labels.items():
        Image.fromarray(np.zeros((*label.shape, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"{stem}.png")
    for stem, pred in (preds or {}).items():
        Image.fromarray(pred.astype(np.uint8)).save(root / "preds" / f"{stem}.png")


def _kind(metric, names=("background", "cat", "dog"), **extra):
    return type(f"Toy_{metric}", (Toy,), {"metric": metric, "class_names": list(names), **extra})


def test_semantic_scores_hand_computed(tmp_path):
    label = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 255, 2, 2]])
    _write(tmp_path, {"a": label}, {"a": pred})
    # valid pixels (label != 255): 7. class 0: label 4 px, pred 2 correct + 1 wrong (pred 1) + 1 none
    #   -> I=2, label=4, pred=2 -> U=4, IoU 50. class 1: label 3 px (0,2),(0,3),(1,2); pred 1 at (0,1),(0,2),(0,3)
    #   -> I=2, pred=3, U=4 -> IoU 50. class 2: predicted at (1,2) only among valid pixels (the (1,3) pixel is ignored)
    #   -> I=0, pred=1, label=0, U=1 -> IoU 0 (predicted but absent: counts under mmseg semantics).
    result = score_predictions(_kind("semantic")(tmp_path), tmp_path / "preds", show_progress=False)
    assert result["mIoU"] == pytest.approx((50 + 50 + 0) / 3)
    assert result["aAcc"] == pytest.approx(100 * 4 / 7)
    assert result["mAcc"] == pytest.approx((50 + 100 * 2 / 3) / 2)  # classes present in the label
    assert result["per_class"] == {"background": pytest.approx(50), "cat": pytest.approx(50), "dog": 0.0}
    assert result["skipped"] == 0 and result["num_images"] == 1
    present = score_predictions(_kind("open_vocab")(tmp_path), tmp_path / "preds", show_progress=False)
    assert present["present_only"] and present["mIoU"] == pytest.approx(50)  # dog absent from GT: excluded


def test_road_scores_hand_computed(tmp_path):
    label = np.array([[1, 1, 1, 0], [0, 0, 0, 0]])
    pred = np.array([[1, 1, 0, 1], [1, 0, 0, 0]])
    _write(tmp_path, {"r": label}, {"r": pred})
    # road: TP 2, FP 2, FN 1 -> IoU 2/5, precision 2/4, recall 2/3, F1 2PR/(P+R) = 4/7
    result = score_predictions(_kind("road", ("background", "road"))(tmp_path), tmp_path / "preds", show_progress=False)
    assert result["IoU"] == pytest.approx(40)
    assert result["precision"] == pytest.approx(50)
    assert result["recall"] == pytest.approx(100 * 2 / 3)
    assert result["F1"] == pytest.approx(100 * 4 / 7)


def test_medical_per_image_average(tmp_path):
    labels = {"m1": np.array([[1, 1], [0, 0]]), "m2": np.array([[1, 1], [1, 1]])}
    preds = {"m1": np.array([[1, 1], [0, 0]]), "m2": np.array([[1, 0], [0, 0]])}
    _write(tmp_path, labels, preds)
    # m1 perfect: Dice 1, IoU 1. m2: TP 1, pred 1, label 4 -> Dice 2/5, IoU 1/4. Averaged over images.
    kind = _kind("medical", ("background", "nucleus"), medical_targets={"nucleus": (1,)})
    result = score_predictions(kind(tmp_path), tmp_path / "preds", show_progress=False)
    assert result["per_target"]["nucleus"]["Dice"] == pytest.approx(100 * (1 + 0.4) / 2)
    assert result["per_target"]["nucleus"]["IoU"] == pytest.approx(100 * (1 + 0.25) / 2)
    assert result["Dice"] == pytest.approx(70)


def test_medical_per_image_scores_drop_ignored_pixels(tmp_path):
    # label 1 255, pred 1 1: the ignored pixel counts on neither side -> Dice 1 and IoU 1 (2/3 and 1/2 if it counted)
    _write(tmp_path, {"m": np.array([[1, 255]])}, {"m": np.array([[1, 1]])})
    kind = _kind("medical", ("background", "nucleus"), medical_targets={"nucleus": (1,)})
    result = score_predictions(kind(tmp_path), tmp_path / "preds", show_progress=False)
    assert result["per_target"]["nucleus"] == pytest.approx({"Dice": 100.0, "IoU": 100.0})


@pytest.mark.parametrize("kind", list(MetricKind))
def test_every_metric_kind_reports_its_summary_columns(tmp_path, kind):
    label = np.array([[0, 1], [1, 0]])
    _write(tmp_path, {"a": label}, {"a": label})
    result = score_predictions(_kind(kind, ("background", "thing"))(tmp_path), tmp_path / "preds", show_progress=False)
    assert type(result["metric"]) is str and result["metric"] == kind.value  # the JSON holds the plain value
    assert [result[c] for c in SUMMARY_COLUMNS[kind]] == pytest.approx([100.0] * len(SUMMARY_COLUMNS[kind]))
    assert result["present_only"] is (kind is MetricKind.OPEN_VOCAB)


def test_metric_kinds_are_one_fact():
    assert set(SUMMARY_COLUMNS) == set(MetricKind)
    assert dataset_names() and all(type(cls.metric) is MetricKind for cls in DATASETS.values())
    try:  # a reader may write the value: registering turns it into the member, and refuses an unknown kind
        assert register_dataset(type("Registered", (Toy,), {"name": "toy-registered", "metric": "road"})).metric \
            is MetricKind.ROAD
        with pytest.raises(ValueError, match="semantic, open_vocab, road, medical.*'panoptic'"):
            register_dataset(type("Unknown", (Toy,), {"name": "toy-unknown", "metric": "panoptic"}))
        assert "toy-unknown" not in DATASETS
    finally:
        DATASETS.pop("toy-registered", None)


@pytest.mark.parametrize("kind, columns, extra", [
    ("road", ["IoU", "precision", "recall", "F1"], None),
    ("medical", ["Dice", "IoU"], "  nucleus: Dice 100.00  IoU 100.00"),
])
def test_cli_eval_prints_the_columns_of_the_kind(tmp_path, capsys, kind, columns, extra):
    label = np.array([[0, 1], [1, 1]])
    _write(tmp_path, {"a": label}, {"a": label})
    name = f"toy-{kind}"
    register_dataset(type(f"Toy_{kind}", (Toy,), {"name": name, "metric": kind, "class_names": ["background", "nucleus"]}))
    try:
        assert main(["eval", "--dataset", name, "--data-root", str(tmp_path), "--split", "val", "--predictions",
                     str(tmp_path / "preds"), "--output", str(tmp_path / "eval")]) == 0
    finally:
        DATASETS.pop(name)
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == ["dataset", *columns, "images"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metric"] == kind
    if extra:
        assert extra in printed


def test_binary_evaluation_reports_the_foreground_iou():
    class Pipe:
        def __call__(self, images, prompt=None, **_):
            return SimpleNamespace(labels=[np.array([[1, 1], [0, 0]]) for _ in images])

    class Data:
        class_names = ["background", "cat"]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 2, 2), "label": torch.tensor([[0, 1], [1, 1]])}

    # cat: label 3 px, pred 2 px, 1 shared -> IoU 1/4; background: label 1 px, pred 2 px, none shared -> IoU 0
    result = evaluate_binary(Pipe(), Data(), EStep(1, 1))
    assert result["IoU_foreground"] == pytest.approx(25) and result["mIoU"] == pytest.approx(12.5)
    assert result["queries"] == 1


def test_bad_samples_are_reported_and_skipped(tmp_path):
    good = np.array([[0, 1], [1, 2]])
    _write(tmp_path, {"good": good, "nopred": good, "badlabel": good, "wrongsize": good},
           {"good": good, "badlabel": good, "wrongsize": np.zeros((3, 3))})
    (tmp_path / "labels" / "badlabel.png").write_bytes(b"garbage")
    result = score_predictions(_kind("semantic")(tmp_path), tmp_path / "preds", show_progress=False)
    assert result["skipped"] == 3 and result["num_images"] == 1 and result["mIoU"] == pytest.approx(100)
    joined = " ".join(result["skipped_samples"])
    assert "nopred.png" in joined and "badlabel.png" in joined and "wrongsize.png" in joined
    (tmp_path / "preds" / "good.png").unlink()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "preds" / "nopred.png")
    (tmp_path / "labels" / "nopred.png").write_bytes(b"x")
    with pytest.raises(DigsegError, match="every sample was skipped"):
        score_predictions(_kind("semantic")(tmp_path), tmp_path / "preds", show_progress=False)


def test_label_png_bit_depth(tmp_path):
    save_label_png(tmp_path / "a.png", np.array([[0, 300, 846, 900]]), 847)
    save_label_png(tmp_path / "b.png", np.array([[0, 2, 7]]), 3)
    assert np.asarray(Image.open(tmp_path / "a.png")).tolist() == [[0, 300, 846, 65535]]
    assert np.asarray(Image.open(tmp_path / "b.png")).tolist() == [[0, 2, 255]]


def _folder_dataset(tmp_path, n=3):
    from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder

    return save_scenes_as_folder(SyntheticScenes(n, seed=4), tmp_path / "data")


def test_cli_eval_scores_a_predictions_folder(tmp_path, capsys):
    data = _folder_dataset(tmp_path)
    preds = tmp_path / "preds"
    preds.mkdir()
    for mask in (data / "masks").glob("*.png"):  # perfect predictions
        Image.open(mask).save(preds / mask.name)
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--predictions", str(preds),
                 "--val-fraction", "1", "--output", str(tmp_path / "eval")]) == 0  # val: every image
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(100) and metrics["aAcc"] == pytest.approx(100)
    assert set(metrics["per_class"]) == {"background", "circle", "square", "triangle"}
    out = capsys.readouterr().out
    assert "mIoU" in out and "folder (val)" in out and "100.00" in out


def test_cli_eval_runs_a_model_and_skips_corrupt_images(tiny_pipe, tmp_path, capsys):
    data = _folder_dataset(tmp_path)
    tiny_pipe.save_pretrained(tmp_path / "model")
    corrupt = sorted((data / "images").glob("*.png"))[0]
    corrupt.write_bytes(b"not an image")
    assert main(["eval", "--dataset", "folder", "--data-root", str(data), "--model", str(tmp_path / "model"),
                 "--val-fraction", "1", "--ensemble-size", "2", "--steps", "2",
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--dtype", "bf16"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["ensemble_size"] == 2 and metrics["steps"] == 2
    assert metrics["runtime"]["device"] == "cpu" and metrics["runtime"]["dtype"] == "bf16"
    assert len(list((tmp_path / "out" / "predictions").glob("*.png"))) == 2
    out = capsys.readouterr().out
    assert "skipped 2 sample(s)" in out  # the corrupt image: once when predicting, once when scoring
    assert f"see 'skipped_samples' in {tmp_path / 'out' / 'metrics.json'}" in out
    # the score of the two predictions it wrote
    assert metrics["mIoU"] == pytest.approx(miou_by_hand(tmp_path / "out" / "predictions", data / "masks",
                                                         len(SYNTHETIC_CLASSES)))


def test_cli_eval_output_is_a_folder(tiny_pipe, tmp_path, capsys):
    data = _folder_dataset(tmp_path, n=2)
    tiny_pipe.save_pretrained(tmp_path / "model")
    common = ["eval", "--dataset", "folder", "--data-root", str(data), "--val-fraction", "1"]
    run = tmp_path / "run"
    assert main([*common, "--model", str(tmp_path / "model"), "--steps", "1", "--output", str(run)]) == 0
    assert f"wrote {run / 'metrics.json'}" in capsys.readouterr().out
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "predictions"]
    pngs = sorted(p.name for p in (run / "predictions").iterdir())
    assert pngs == sorted(p.name for p in (data / "images").iterdir()) and len(pngs) == 2  # <stem>.png
    scored = tmp_path / "scored"
    assert main([*common, "--predictions", str(run / "predictions"), "--output", str(scored)]) == 0
    assert [p.name for p in scored.iterdir()] == ["metrics.json"]
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (run, scored)]
    assert metrics[0]["mIoU"] == metrics[1]["mIoU"]
    capsys.readouterr()
    old = tmp_path / "metrics.json"  # a metrics file where the folder would go: refused before the model loads
    old.write_text("{}")
    for source in (["--model", str(tmp_path / "no-model")], ["--predictions", str(run / "predictions")]):
        assert main([*common, *source, "--output", str(old)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --output {old} is a file") and "a folder" in err and "\n" not in err, err
    assert old.read_text() == "{}"


def test_threshold_search_on_a_binary_dataset(tmp_path):
    """The threshold of the grid (0.05 ... 0.95) with the best mean per-image Dice, on foreground probabilities
    given by hand (a stand-in for the model, answering each image by its size):
      a (1x4): label 0 1 1 0, p .30 .72 .90 .68 -> t = 0.70: 0 1 1 0, Dice 100; t in [.30, .68): Dice 80
      b (2x2): label 1 1 / 0 0, p .90 .50 / .60 .10 -> t = 0.70: 1 0 / 0 0, Dice 2*1/(1+2) = 66.7; t in [.1, .5): 80
    mean Dice: 83.3 at 0.70, at most 80 elsewhere (Dice of the pooled pixels would be 6/7 = 85.7 at 0.70)."""
    from digseg.outputs import DiGSegOutput

    root = tmp_path / "bin"
    _write(root, {"a": np.array([[0, 1, 1, 0]]), "b": np.array([[1, 1], [0, 0]])})
    foreground = {(4, 1): [[0.30, 0.72, 0.90, 0.68]], (2, 2): [[0.90, 0.50], [0.60, 0.10]]}  # by (width, height)

    class Pipe:
        config = SimpleNamespace(task="binary", class_names=None)

        def __call__(self, images, prompt=None, **_):
            assert prompt == "nucleus"
            p = np.array([foreground[image.size] for image in images], np.float32)
            return DiGSegOutput(labels=(p > 0.5).astype(np.int64), probabilities=np.stack([1 - p, p], 1),
                                uncertainty=None, class_names=["background", "nucleus"])

    threshold, dice = search_threshold(Pipe(), _kind("medical", ("background", "nucleus"))(root), show_progress=False)
    assert threshold == pytest.approx(0.70) and dice == pytest.approx((100 + 200 / 3) / 2)
    with pytest.raises(DigsegError, match="2-class"):
        search_threshold(Pipe(), _kind("medical")(root))


def test_cli_eval_argument_errors(tmp_path, capsys):
    assert main(["eval", "--dataset", "folder", "--data-root", str(tmp_path)]) == 2
    assert "exactly one of --predictions" in capsys.readouterr().err
    assert main(["eval", "--dataset", "nope", "--data-root", str(tmp_path), "--predictions", str(tmp_path)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_scores_in_memory_equal_the_scores_of_written_predictions(tiny_pipe, tmp_path):
    """Validation scores predictions as they come (`Scores` through `on_result`, no files): the same metrics as
    `digseg eval`'s PNGs then `score_predictions`; synthetic scenes read from their items (`ItemsView`) give the
    same images and labels as the same scenes written to a folder."""
    from digseg.data.registry import read_dataset
    from digseg.data.synthetic import ItemsView, SyntheticScenes
    from digseg.evaluation.dataset_eval import Scores, predict_dataset

    data = read_dataset("folder", str(_folder_dataset(tmp_path)), split="val", val_fraction=1.0)
    predict_dataset(tiny_pipe, data, tmp_path / "preds", show_progress=False)
    scores = Scores(data)
    predict_dataset(tiny_pipe, data, None, show_progress=False,
                    on_result=lambda i, sample, out: scores.add(i, out.labels[0], data.read_label(sample)))
    assert scores.result() == score_predictions(data, tmp_path / "preds", show_progress=False)
    assert len(list((tmp_path / "preds").glob("*.png"))) == 3
    items = ItemsView(SyntheticScenes(3, seed=4), limit=2)
    assert len(items.samples) == 2 and items.class_names == data.class_names
    image, label = SyntheticScenes(3, seed=4).load_pair(1)
    assert np.array_equal(np.asarray(items.read_image(items.samples[1])), np.asarray(image))
    assert np.array_equal(items.read_label(items.samples[1]), label)
