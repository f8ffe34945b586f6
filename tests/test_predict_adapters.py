"""`digseg predict --adapter ... --image-list FILE` whose lines name their adapter after a tab: the base loads once,
each adapter's images go to `<output>/<adapter>/` (a complete predict output), predicted as
`pipe.set_adapter(name); pipe(...)` predicts them, seeded by their place in their group; bad names are one line."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from digseg import DiGSegPipeline
from digseg.cli import main
from digseg.data.io import load_image
from digseg.seeding import seeded_generator
from test_adapters import adapters  # noqa: F401 (a module fixture: two trained adapters)


def _predict(backbone, listing, out, *extra) -> int:
    return main(["predict", "--model", str(backbone), "--image-list", str(listing), "--output", str(out),
                 "--steps", "1", "--outputs", "labels,json,report", "--no-progress", *extra])


def test_an_image_list_chooses_the_adapter_of_each_image(adapters, tiny_backbone, tmp_path, capsys):  # noqa: F811
    (roads, _), (cells, _) = adapters
    flags = ["--adapter", f"roads={roads}", "--adapter", f"cells={cells}"]
    for i, name in enumerate("abcd"):
        pixels = (np.random.default_rng(i).random((16, 24, 3)) * 255).astype(np.uint8)  # [H, W, 3]
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
    listing = tmp_path / "list.txt"
    lines = ["# mixed domains", "a.png\tcells", "b.png\troads", "c.png", "d.png\tcells", "a.png\troads", "d.png\tcells"]
    listing.write_text("".join(f"{tmp_path / line}\n" if line[0] != "#" else f"{line}\n" for line in lines),
                       encoding="utf-8")  # c.png: --use-adapter's; a.png for each adapter; d.png twice for one: once
    out = tmp_path / "out"
    assert _predict(tiny_backbone, listing, out, *flags, "--use-adapter", "roads") == 0
    closing = [line.split(" ")[:5] for line in capsys.readouterr().out.splitlines() if "wrote predictions" in line]
    assert closing == [["cells:", "wrote", "predictions", "for", "2"], ["roads:", "wrote", "predictions", "for", "3"]]

    pipe = DiGSegPipeline.from_base(tiny_backbone)
    pipe.load_adapter(roads, name="roads")
    pipe.load_adapter(cells, name="cells")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cells", "roads"]
    for name, stems in (("cells", "ad"), ("roads", "bca")):  # groups in first-use order; list order within
        group = out / name
        assert list(json.loads((group / "summary.json").read_text())["images"]) == [f"{s}.png" for s in stems]
        assert (group / "index.html").is_file()
        pipe.set_adapter(name)
        for i, stem in enumerate(stems):
            expected = pipe(load_image(tmp_path / f"{stem}.png", exif_transpose=True), num_inference_steps=1,
                            generator=seeded_generator(0, i), show_progress_bar=False)
            np.testing.assert_array_equal(np.asarray(Image.open(group / f"{stem}_label.png")), expected.labels[0])
            settings = json.loads((group / f"{stem}_summary.json").read_text())["settings"]
            assert settings["adapter"] == name and settings["classes"] == pipe.class_names

    # one adapter in use: the layout without subfolders, as before
    listing.write_text(f"{tmp_path / 'a.png'}\tcells\n{tmp_path / 'b.png'}\n", encoding="utf-8")
    assert _predict(tiny_backbone, listing, tmp_path / "one", *flags, "--use-adapter", "cells") == 0
    assert list(json.loads((tmp_path / "one" / "summary.json").read_text())["images"]) == ["a.png", "b.png"]

    # a name that is no --adapter, or any name without --adapter: one line naming the file and line, nothing loaded
    listing.write_text(f"# first\n\n{tmp_path / 'a.png'}\tcells\n{tmp_path / 'b.png'}\troadz\n", encoding="utf-8")
    for extra, bad in ((flags, "line 4: unknown adapter 'roadz' (the --adapter names are roads, cells)"),
                       ([], "line 3: unknown adapter 'cells' (no --adapter was given)")):
        assert _predict(tiny_backbone, listing, tmp_path / "bad", *extra) == 2
        err = capsys.readouterr().err
        assert f"image list {listing}, {bad}" in err and err.count("\n") == 1
        assert not (tmp_path / "bad").exists()
    # several adapters, a line naming none and no --use-adapter: the command's own one-line error
    listing.write_text(f"{tmp_path / 'a.png'}\tcells\n{tmp_path / 'b.png'}\n", encoding="utf-8")
    assert _predict(tiny_backbone, listing, tmp_path / "bad", *flags) == 2
    assert "--use-adapter NAME" in capsys.readouterr().err
