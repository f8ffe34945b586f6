"""`--dataset hf:NAME_OR_PATH`: datasets of the `datasets` library (save_to_disk folders, parquet files) read as the
`folder` reader reads the same pairs: identical samples and training batches (augmented, in loader workers, resumed
mid-run), class names from a file, a ClassLabel feature or id2label.json, label conventions, and one-line errors
naming the row for bad rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from digseg.cli import main
from digseg.data.hf_options import HFOptions, hf_options, parse_hf_pairs
from digseg.data.registry import read_dataset
from digseg.errors import ConfigError, DataError
from digseg.training.run import build_dataset, training_augmentation
from digseg.training.samples import TrainingData, TrainingSamples
from hf_fixtures import CLASSES, write_hf_copies, write_pairs
from training_helpers import error_line, train_config

datasets = pytest.importorskip("datasets", reason='hf: datasets need the datasets library: pip install -e ".[hf]"')


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    pairs = write_pairs(root / "pairs")
    saved, parquet = write_hf_copies(pairs, root)
    return {"pairs": root / "pairs", "saved": saved, "parquet": parquet, "root": root}


def _batches(config, start: int, stop: int, num_workers: int):
    """Micro-steps [start, stop) of `config` as the trainer reads them: (indices, images, labels) per step."""
    dataset = build_dataset(config.data, config.run.seed)
    samples = TrainingSamples(dataset, training_augmentation(config.data), config.run.seed, dataset.ignore_index)
    batches = list(TrainingData(samples, None, num_workers).micro_steps(start, stop, config.optim.batch_size,
                                                                        seed=config.run.seed))
    assert all(b.error is None for b in batches), [b.error for b in batches]
    return [(b.indices, b.images.clone(), b.labels.clone()) for b in batches]


def test_hf_and_folder_give_the_same_samples_and_training_batches(data):
    folder = train_config(dataset="folder", data_root=str(data["pairs"]), augmentation=True, resolution=24,
                          batch_size=2, seed=3)
    hf = train_config(dataset=f"hf:{data['saved']}", augmentation=True, resolution=24, batch_size=2, seed=3)
    a, b = build_dataset(folder.data, 3), build_dataset(hf.data, 3)
    assert b.class_names == a.class_names == CLASSES and b.ignore_index == a.ignore_index == 255
    assert len(a) == len(b) == 6
    for i in range(len(a)):  # native pairs, JPEG included
        (ia, la), (ib, lb) = a.load_pair(i), b.load_pair(i)
        assert np.array_equal(np.asarray(ia), np.asarray(ib)) and np.array_equal(la, lb)
    want = _batches(folder, 0, 6, num_workers=0)
    got = _batches(hf, 0, 6, num_workers=2)  # the Arrow table travels to the loader's worker processes
    resumed = _batches(hf, 3, 6, num_workers=0)  # a run resumed at micro-step 3
    for (ia, xa, ya), (ib, xb, yb) in zip(want, got):
        assert ia == ib and torch.equal(xa, xb) and torch.equal(ya, yb)
    for (_, xa, ya), (_, xb, yb) in zip(want[3:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert any((y == 255).any() for _, _, y in want)  # unlabelled pixels stay ignored
    # the validation split: digseg's "val" is the dataset's "validation"
    va = read_dataset("folder", str(data["pairs"]), split="val")
    vb = read_dataset(f"hf:{data['saved']}", split="val")
    assert vb.hf_split == "validation" and len(va) == len(vb) == 3
    assert all(np.array_equal(va.read_label(x), vb.read_label(y)) for x, y in zip(va.samples, vb.samples))


def test_a_parquet_file_is_split_train_and_browse_data_reads_it(data, tmp_path, capsys):
    pairs = read_dataset("folder", str(data["pairs"]), split="train")
    table = read_dataset(f"hf:{data['parquet']}", split="train",
                         hf=HFOptions(classes_file=str(data["pairs"] / "classes.txt")))
    assert [np.array_equal(pairs.load_pair(i)[1], table.load_pair(i)[1]) for i in range(6)] == [True] * 6
    with pytest.raises(DataError, match=r"has no split 'validation' or 'val' or 'valid'; its splits are train"):
        read_dataset(f"hf:{data['parquet']}", split="val", hf=HFOptions(classes_file=str(data["pairs"] / "classes.txt")))
    out = tmp_path / "browse"
    assert main(["browse-data", "--dataset", f"hf:{data['parquet']}", "--cfg-options",
                 f"data.hf.classes_file={data['pairs'] / 'classes.txt'}", "--crop-size", "24", "--num", "3",
                 "--output", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir())[:3] == ["0000_image.png", "0000_label.png", "0000_overlay.png"]
    assert np.asarray(Image.open(out / "0000_label.png")).shape == (24, 24)


def test_class_names_from_a_class_label_feature_and_id2label_json_with_label_conventions(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Sequence
    from datasets import Image as ImageFeature

    stored = [[0, 1, 2], [2, 1, 0]]
    image = Image.fromarray(np.full((2, 3, 3), 100, np.uint8))
    names = ["unlabelled", "road", "car"]  # names of the stored values: 0 names the unlabelled pixels
    features = Features({"image": ImageFeature(), "mask": Sequence(Sequence(ClassLabel(names=names)))})
    Dataset.from_dict({"image": [image], "mask": [stored]}, features=features).save_to_disk(str(tmp_path / "a"))
    ds = read_dataset(f"hf:{tmp_path / 'a'}", split="train", hf=HFOptions(label_column="mask", reduce_zero_label=True))
    assert ds.class_names == ["road", "car"]  # ClassLabel names the stored values; stored 0's name is dropped
    assert ds.read_label(ds.samples[0]).tolist() == [[255, 0, 1], [1, 0, 255]]  # 0 unlabelled, v -> v-1
    # a plain integer column (9: unlabelled, ignore_index=9), names from id2label.json beside the data
    Dataset.from_dict({"image": [image], "label": [[[0, 1, 2], [2, 1, 9]]]},
                      features=Features({"image": ImageFeature(),
                                         "label": Sequence(Sequence(datasets.Value("uint8")))})
                      ).save_to_disk(str(tmp_path / "b"))
    (tmp_path / "b" / "id2label.json").write_text(json.dumps({"0": "sky", "1": "road", "2": "car"}))
    ds = read_dataset(f"hf:{tmp_path / 'b'}", split="train", hf=HFOptions(ignore_index=9))
    assert ds.class_names == ["sky", "road", "car"] and ds.read_label(ds.samples[0]).tolist() == [[0, 1, 2], [2, 1, 255]]
    with pytest.raises(ConfigError, match="ignore_index=1 marks a class"):
        read_dataset(f"hf:{tmp_path / 'b'}", split="train", hf=HFOptions(ignore_index=1))


def _bad_rows(folder):
    """Rows: 0 fine, 1 an RGB label with different channels, 2 a label of another size, 3 a class id out of
    range, 4 no label."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    image = Image.fromarray(np.full((8, 10, 3), 50, np.uint8))
    good = Image.fromarray(np.ones((8, 10), np.uint8))
    rgb = Image.fromarray(np.stack([np.ones((8, 10), np.uint8), np.zeros((8, 10), np.uint8),
                                    np.zeros((8, 10), np.uint8)], -1))
    labels = [good, rgb, Image.fromarray(np.ones((8, 9), np.uint8)), Image.fromarray(np.full((8, 10), 7, np.uint8)),
              None]
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    Dataset.from_dict({"image": [image] * 5, "label": labels}, features=features).save_to_disk(str(folder))
    (folder / "classes.txt").write_text("a\nb\n")


def test_bad_rows_give_one_line_errors_naming_the_row(tmp_path, capsys):
    _bad_rows(tmp_path / "bad")
    ds = read_dataset(f"hf:{tmp_path / 'bad'}", split="train")
    ds.load_pair(0)
    where = f"hf:{tmp_path / 'bad'} (train) row"
    expected = {1: "must be single-channel (class ids), but it is a RGB image",
                2: "is 9x8 but image", 3: "has values [7] outside the 2 classes", 4: "column 'label' is empty"}
    for row, message in expected.items():
        with pytest.raises(DataError) as exc:
            ds.load_pair(row)
        text = str(exc.value)
        assert f"{where} {row} column 'label'" in text and message in text and "\n" not in text, text
    with pytest.raises(DataError, match=r"has no column 'mask' \(choose with the hf option label_column\); its columns are "
                                        r"image, label"):
        read_dataset(f"hf:{tmp_path / 'bad'}", split="train", hf=HFOptions(label_column="mask"))
    # through the command line: status 2 and one line
    capsys.readouterr()
    assert main(["browse-data", "--dataset", f"hf:{tmp_path / 'bad'}", "--crop-size", "8", "--cfg-options",
                 "data.augmentation=false", "--batch-size", "5", "--num", "5", "--output", str(tmp_path / "out")]) == 2
    line = error_line(capsys)  # every bad row listed before it
    assert line.startswith("error: 4 of 5 samples") and f"{where} 1 " in line, line


def test_hf_options_belong_to_hf_datasets_and_are_typed():
    with pytest.raises(ConfigError, match=r"data.hf \(ignore_index\) sets how an hf: dataset is read"):
        train_config(dataset="folder", data_root="x", hf={"ignore_index": 0})
    with pytest.raises(ConfigError, match=r"--hf \(val_split\) sets how an hf: dataset is read; synthetic"):
        hf_options("synthetic", {"val_split": "dev"}, "--hf")
    with pytest.raises(ConfigError, match="unknown option.* split; known: image_column"):
        hf_options("hf:x", {"split": "dev"})
    with pytest.raises(ConfigError, match="ignore_index must be a label value from 0 to 65535, got 70000"):
        hf_options("hf:x", parse_hf_pairs(["ignore_index=70000"]))
    options = hf_options("hf:x", parse_hf_pairs(["train_split=a", "val_split=2017", "reduce_zero_label=true"]))
    assert (options.train_split, options.val_split) == ("a", "2017")
    assert options.reduce_zero_label is True
    with pytest.raises(ConfigError, match="leave out --data-root"):
        read_dataset("hf:x", "some/root")
    with pytest.raises(DataError, match="no such file or folder"):
        read_dataset("hf:./missing/data", split="train")
