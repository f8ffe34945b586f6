"""`digseg predict` over real photo folders: unreadable files skipped and reported (exit status 3), EXIF
orientation, batching with per-image seeds, atomic per-image outputs and `--skip-existing`, `--image-list`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digseg.cli import predict
from digseg.cli import main
from digseg.data.io import load_image
from digseg.data.synthetic import SYNTHETIC_CLASSES
from digseg.errors import ConfigError
from digseg.pipelines.inputs import read_image_list, select_images
from digseg.cli.predict import EXIT_SKIPPED, RecordIndex, size_batches
from digseg.seeding import seeded_generator


@pytest.fixture(scope="module")
def model(tiny_backbone, tmp_path_factory):
    from digseg import DiGSegPipeline

    path = tmp_path_factory.mktemp("model") / "model"
    DiGSegPipeline.from_backbone(tiny_backbone, class_names=list(SYNTHETIC_CLASSES)).save_pretrained(path)
    return path


def _noise(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*_label.png"))}


def _predict(model: Path, out: Path, *args: str) -> int:
    return main(["predict", "--model", str(model), "--output", str(out), "--steps", "1", "--no-progress", *args])


# ---------------------------------------------------------------------------------------------- skip and report
def _mixed_folder(folder: Path) -> tuple[list[str], list[str]]:
    """8 good images in various modes and formats, and 3 broken files -> (good names, bad names)."""
    folder.mkdir(parents=True)
    rgb = _noise(40, 56, 0)
    Image.fromarray(rgb).save(folder / "rgb.jpg")
    Image.fromarray(_noise(32, 48, 1, 1)).save(folder / "grey.png")  # L
    Image.fromarray(_noise(48, 32, 2, 4)).save(folder / "rgba.png")  # RGBA
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")  # P
    Image.fromarray((_noise(30, 40, 3, 1).astype(np.uint16) * 200)).save(folder / "deep.png")  # I;16
    Image.fromarray(_noise(36, 36, 4, 1) > 127).save(folder / "bilevel.bmp")  # 1
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")  # CMYK JPEG
    Image.fromarray(_noise(24, 64, 5, 1)).convert("LA").save(folder / "grey-alpha.tif")  # LA TIFF
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    Image.fromarray(_noise(64, 64, 6)).save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "full.png").unlink()
    good = ["bilevel.bmp", "cmyk.jpg", "deep.png", "grey-alpha.tif", "grey.png", "palette.png", "rgb.jpg", "rgba.png"]
    return good, ["empty.png", "notes.jpg", "truncated.png"]


def test_unreadable_files_are_skipped_named_and_reported(model, tmp_path, capsys):
    good, bad = _mixed_folder(tmp_path / "photos")
    out = tmp_path / "out"
    assert _predict(model, out, "--image", str(tmp_path / "photos"), "--batch-size", "2") == EXIT_SKIPPED == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert len(lines) == 3 and all(name in line for name, line in zip(bad, lines)), captured.err
    assert "skipped 3 of 11 image(s)" in captured.out and "exit status 3" in captured.out

    for name in good:  # every good image written, at its own size
        stem = Path(name).stem
        record = json.loads((out / f"{stem}_summary.json").read_text(encoding="utf-8"))
        size = Image.open(tmp_path / "photos" / name).size
        assert record["image_size"] == {"width": size[0], "height": size[1]}
        assert Image.open(out / f"{stem}_label.png").size == size
    run = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert list(run["images"]) == good
    assert [s["name"] for s in run["skipped"]] == bad
    assert all(s["name"] in s["reason"] and Path(s["source"]).name == s["name"] for s in run["skipped"])
    assert "not a recognised image format" in run["skipped"][1]["reason"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('<figure class="entry"') == 8 and "8 images, 3 skipped" in page
    assert all(f'<span class="skipped-name">{name}</span>' in page for name in bad)
    assert not predict.partial_dir(out).exists()


def test_a_run_without_bad_files_exits_0_and_one_with_only_missing_files_fails_early(model, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(_noise(16, 16, 0)).save(image)
    assert _predict(model, tmp_path / "ok", "--image", str(image)) == 0
    # missing files among others are skipped; when none exists it is a user error, before any work
    assert _predict(model, tmp_path / "some", "--image", str(image), str(tmp_path / "gone.png")) == EXIT_SKIPPED
    assert _predict(model, tmp_path / "none", "--image", str(tmp_path / "gone.png")) == 2
    assert "gone.png" in capsys.readouterr().err and not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------------------------- EXIF
def _portrait_jpeg(path: Path) -> np.ndarray:
    """A JPEG stored 64 wide x 32 high with EXIF orientation 6 (rotate 90 degrees clockwise to display, as phones
    store portrait photos) -> the pixels as displayed, [64, 32, 3]."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:, :32] = _noise(32, 32, 7)  # noise in the stored left half = the displayed top half
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    return np.rot90(decoded, k=-1).copy()  # 90 degrees clockwise


def test_exif_orientation_is_applied_to_predict_pipeline_and_demo_but_not_to_datasets(model, tmp_path):
    from digseg import DiGSegPipeline
    from digseg.cli.demo import check_image_file

    path = tmp_path / "phone.jpg"
    displayed = _portrait_jpeg(path)  # [64, 32, 3]
    assert load_image(path).size == (64, 32)  # datasets: the stored pixels (labels are aligned with them)
    assert np.array_equal(np.asarray(load_image(path, exif_transpose=True)), displayed)
    assert check_image_file(path).size == (32, 64)

    out = tmp_path / "out"
    assert _predict(model, out, "--image", str(path)) == 0
    label = np.asarray(Image.open(out / "phone_label.png"))
    assert label.shape == (64, 32)
    assert np.array_equal(np.asarray(Image.open(out / "phone_input.jpg")).shape, displayed.shape)
    probability = np.asarray(Image.open(out / "phone_prob_circle.png"), dtype=np.float32) / 255

    pipe = DiGSegPipeline.from_pretrained(model)
    expected = pipe(displayed, num_inference_steps=1, generator=seeded_generator(0, 0), show_progress_bar=False)
    np.testing.assert_array_equal(label, expected.labels[0])  # content: the displayed image was segmented
    np.testing.assert_allclose(probability, expected.probabilities[0][1], atol=1 / 255 + 1e-6)
    assert expected.probabilities[0][1].std() > 1e-3  # the maps are not flat, so a sideways one would differ
    sideways = pipe(np.rot90(displayed).copy(), num_inference_steps=1, generator=seeded_generator(0, 0),
                    show_progress_bar=False)
    assert not np.allclose(np.rot90(sideways.probabilities[0][1], k=-1), expected.probabilities[0][1], atol=1e-3)

    by_path = pipe(str(path), num_inference_steps=1, generator=seeded_generator(0, 0), show_progress_bar=False)
    np.testing.assert_array_equal(by_path.labels[0], expected.labels[0])


# ---------------------------------------------------------------------------------------------- batching
def test_batch_size_gives_the_labels_of_batch_1(model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = [(48, 64), (32, 32), (48, 64), (64, 48), (48, 64), (32, 32), (40, 52)]  # interleaved sizes
    for k, (h, w) in enumerate(sizes):
        Image.fromarray(_noise(h, w, 10 + k)).save(folder / f"img{k}.png")
    args = ("--image", str(folder), "--ensemble-size", "2")
    assert _predict(model, tmp_path / "b1", *args) == 0
    assert _predict(model, tmp_path / "b3", *args, "--batch-size", "3") == 0
    one, three = _labels(tmp_path / "b1"), _labels(tmp_path / "b3")
    assert len(one) == len(sizes) and one.keys() == three.keys()
    for name in one:
        np.testing.assert_array_equal(three[name], one[name], err_msg=name)
    for name in ("img0_prob_circle.png", "img3_uncertainty.png"):  # same noise per image, not only same labels
        a, b = (np.asarray(Image.open(tmp_path / run / name), dtype=int) for run in ("b1", "b3"))
        assert np.abs(a - b).max() <= 1, name


def test_size_batches_groups_by_size_and_holds_a_bounded_number():
    fed, out = [], []

    def keyed():
        for item, key in enumerate("ababcdd"):
            assert len(fed) - sum(map(len, out)) <= 3  # the items held
            fed.append(item)
            yield key, item

    for batch in size_batches(keyed(), batch_size=2, max_pending=3):
        out.append(batch)
    assert sorted(i for batch in out for i in batch) == list(range(7))  # every item once
    assert out[:2] == [[0, 2], [1, 3]]  # same size together, in input order
    assert all(len({"ababcdd"[i] for i in batch}) == 1 and len(batch) <= 2 for batch in out)


# ---------------------------------------------------------------------------------------------- resuming
def test_skip_existing_continues_a_run_killed_midway(model, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(_noise(32, 40, 20 + k)).save(folder / f"p{k}.png")
    Image.fromarray(_noise(8, 8, 0)).save(folder / "p9.png")
    (folder / "p9.png").write_bytes(b"broken")  # one unreadable file too: the resumed report still lists it
    args = ("--image", str(folder), "--ensemble-size", "2", "--batch-size", "2")
    assert _predict(model, tmp_path / "reference", *args) == EXIT_SKIPPED

    out = tmp_path / "out"
    real_publish, published = predict.publish, []

    def killed_on_the_third(staging, out_dir):  # killed while moving the third image's files
        if len(published) == 2:
            first = sorted(staging.iterdir())[0]
            first.replace(out_dir / first.name)  # one file landed, the others and the record did not
            raise KeyboardInterrupt
        real_publish(staging, out_dir)
        published.append(staging.name)

    monkeypatch.setattr(predict, "publish", killed_on_the_third)
    assert _predict(model, out, *args) == 130
    monkeypatch.setattr(predict, "publish", real_publish)
    assert published == ["p0", "p1"]
    assert sorted(RecordIndex(out).where) == ["p0", "p1"]  # p2 is not finished: it has no record
    assert (out / "p2_input.png").is_file() and predict.partial_dir(out).joinpath("p2").is_dir()
    assert not (out / "summary.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("p[01]_*")}
    capsys.readouterr()

    assert _predict(model, out, *args, "--skip-existing") == EXIT_SKIPPED
    printed = capsys.readouterr().out
    assert "2 of 6 image(s) already finished" in printed and "(2 kept from an earlier run)" in printed
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("p[01]_*")} == finished  # not redone
    assert not predict.partial_dir(out).exists()
    reference, resumed = _labels(tmp_path / "reference"), _labels(out)
    assert resumed.keys() == reference.keys() and len(resumed) == 5
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    run = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert list(run["images"]) == [f"p{k}.png" for k in range(5)] and [s["name"] for s in run["skipped"]] == ["p9.png"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('<figure class="entry"') == 5 and "p9.png" in page

    assert _predict(model, out, *args, "--skip-existing", "--seed", "1") == 2  # other settings: not a continuation
    err = capsys.readouterr().err
    assert "other settings (seed)" in err and "--skip-existing" in err
    assert _predict(model, out, *args, "--skip-existing", "--outputs", "labels") == 2  # other files: likewise
    assert "other settings (outputs)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- image lists
def test_image_list_adds_files_named_one_per_line(model, tmp_path, monkeypatch):
    for name in ("a.png", "b[1].png", "c.png"):
        Image.fromarray(_noise(16, 16, 0)).save(tmp_path / name)
    listing = tmp_path / "list.txt"
    listing.write_text("# photos to do\nb[1].png\n\n  c.png  \na.png\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # relative entries are relative to the current folder, as on the command line
    assert read_image_list(listing) == ["b[1].png", "c.png", "a.png"]
    paths = select_images(["a.png"], listing)
    assert paths == [Path("a.png"), Path("b[1].png"), Path("c.png")]  # a.png once, at its first place
    assert _predict(model, tmp_path / "out", "--image-list", str(listing)) == 0
    assert list(json.loads((tmp_path / "out" / "summary.json").read_text())["images"]) == ["b[1].png", "c.png", "a.png"]

    listing.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="image list file .* lists nothing"):
        read_image_list(listing)
    with pytest.raises(ConfigError, match="image list file not found"):
        read_image_list(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="no input images"):
        select_images(None, None)


def test_the_progress_bar_counts_images_when_asked(tiny_pipe, tmp_path, capsys):
    """A bar of the images on stderr with show_progress=True; none with False, nor by default (None) when stderr is
    not a terminal (as under pytest)."""
    from digseg.cli.predict import run_predict

    paths = []
    for k in range(3):
        paths.append(tmp_path / f"i{k}.png")
        Image.fromarray(_noise(16, 16, k)).save(paths[-1])
    bars = {}
    for show in (True, False, None):
        result = run_predict(tiny_pipe, paths, tmp_path / f"out-{show}", {"num_inference_steps": 1}, {"seed": 0},
                             show_progress=show)
        assert result.exit_status == 0 and result.written == result.images == 3 and result.reused == 0
        bars[show] = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    assert re.fullmatch(r"predict: 100%\|.*\| 3/3 \[.*image.*\]", bars[True][-1]), bars[True]
    assert bars[False] == bars[None] == []


# ---------------------------------------------------------------------------------------------- outputs at scale
def test_outputs_labels_writes_one_file_per_image(model, tmp_path):
    """--outputs labels: one label map per image, summary.json and the run's records; nothing else per image
    (the same at scale: benchmarks/bench_predict.py --disk)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = _noise(8, 8, 0)
    for k in range(5):
        Image.fromarray(pixels).save(folder / f"{k:04d}.png")
    out = tmp_path / "out"
    assert _predict(model, out, "--image", str(folder), "--outputs", "labels", "--batch-size", "2",
                    "--processing-resolution", "16") == 0
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted([f"{k:04d}_label.png" for k in range(5)] + ["summary.json"])
    assert [p.name for p in (out / ".digseg-predict").iterdir()] == ["records-00000.jsonl"]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 5 and summary["runtime"]["device"] == "cpu"
    record = RecordIndex(out).get("0004")
    assert record["files"]["label"] == "0004_label.png" and record["files"]["overlay"] is None


def test_outputs_choose_the_files_of_each_image(model, tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(_noise(16, 16, 0)).save(image)
    assert _predict(model, tmp_path / "o", "--image", str(image), "--outputs", "overlay,json,report",
                    "--ensemble-size", "2") == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")) == [
        "a_overlay.png", "a_overlay_legend.png", "a_summary.json", "index.html", "summary.json"]
    assert json.loads((tmp_path / "o" / "a_summary.json").read_text())["settings"]["outputs"] == ["overlay", "json", "report"]
    assert _predict(model, tmp_path / "p", "--image", str(image), "--outputs", "labels,maps") == 2
    assert "unknown kind(s) maps" in capsys.readouterr().err and not (tmp_path / "p").exists()
