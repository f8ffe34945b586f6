"""Every public output of a trained model, written to one folder, and a bit-exact comparison of two such folders.

Used to show that a refactoring changes no result: run it before and after on the same model, then compare.

    python tools/snapshot_outputs.py write digseg-quickstart/model /tmp/before [--one-step runs/one-step]
    ...change the code...
    python tools/snapshot_outputs.py write digseg-quickstart/model /tmp/after [--one-step runs/one-step]
    python tools/snapshot_outputs.py compare /tmp/before /tmp/after   # exit 1 on any difference

`write` saves (a) `pipeline.npz`: labels, probabilities, class ids and uncertainty of pipeline calls covering the
query modes (palette, binary, per-class with and without top-k, templates), E-Step ensembles (median, mean,
decode_members), the test protocols (slide, global view, flip, keep-ratio scale), images of different sizes in
one call, `output_type="pt"`, a light mask decoder (seeded random weights) and, with `--one-step`, a one-step
model; (b) the files `digseg eval` and `digseg predict` write (metrics JSON, label PNGs, overlays, summaries).
`compare` checks arrays bit for bit and files byte for byte; JSON values that are timings (keys naming seconds,
time or a rate per second) and the timing line of index.html are left out.

Write both snapshots with the same number of threads (e.g. `OMP_NUM_THREADS=1`): float sums are reduced in
another order with another thread count, which moves probabilities by about 1e-5. `write` records the count,
and `compare` says when the two differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

TIMING_KEY = re.compile(r"(time|seconds|_per_s|per_second|wall|elapsed|_s$)")


def _calls(scenes: list[torch.Tensor], names: list[str]) -> dict[str, dict]:
    """name -> pipeline keyword arguments."""
    one, two = scenes[0], scenes[:2]
    return {
        "palette": dict(image=two),
        "binary": dict(image=two, prompt=names[1]),
        "binary_prompts": dict(image=two, prompt=[names[1], names[2]]),
        "per_class": dict(image=one, classes=names[1:] + ["a red car"]),
        "per_class_top_k": dict(image=one, classes=names[1:], top_k=2),
        "templates": dict(image=one, classes=names[1:], templates=["a photo of a {}.", "{}"]),
        "ensemble_4x2": dict(image=one, prompt=names[1], ensemble_size=4, num_inference_steps=2),
        "ensemble_mean": dict(image=one, ensemble_size=3, num_inference_steps=2, ensemble_reduction="mean"),
        "decode_members": dict(image=one, ensemble_size=2, num_inference_steps=1, decode_members=True),
        "slide": dict(image=torch.cat([one, one], -1), mode="slide", crop_size=64, stride=40),
        "slide_global_flip": dict(image=torch.cat([one, one], -1), mode="slide", crop_size=64, stride=40,
                                  global_view=True, flip=True),
        "scale_keep_ratio": dict(image=torch.cat([one, one], -1), scale=(96, 48)),
        "sizes_differ": dict(image=[one, one[:, :48, :40]], prompt=names[2], batch_size=2),
        "output_pt": dict(image=one, output_type="pt"),
        "mask_decoder_vae": dict(image=one, mask_decoder="vae"),
    }


def _arrays(prefix: str, out) -> dict[str, np.ndarray]:
    found = {}
    for field in ("labels", "probabilities", "uncertainty", "probability_class_ids"):
        value = getattr(out, field)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            found[f"{prefix}.{field}.{i}"] = item.cpu().numpy() if torch.is_tensor(item) else np.asarray(item)
    found[f"{prefix}.class_names"] = np.array(out.class_names)
    return found


def write(model: Path, out: Path, one_step: Path | None) -> None:
    from digseg import DiGSegPipeline
    from digseg.cli import main
    from digseg.data.synthetic import SyntheticScenes, save_scenes_as_folder
    from digseg.models.mask_decoder import LightMaskDecoder

    out.mkdir(parents=True, exist_ok=True)
    data = SyntheticScenes(4, seed=11)
    scenes = [data[i]["image"] * 0.5 + 0.5 for i in range(len(data))]  # [3, H, W] in [0, 1]
    pipe = DiGSegPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    names = list(pipe.config.class_names)
    arrays: dict[str, np.ndarray] = {}
    for name, kwargs in _calls(scenes, names).items():
        gen = [torch.Generator().manual_seed(i) for i in range(len(kwargs["image"]))] \
            if isinstance(kwargs["image"], list) else torch.Generator().manual_seed(0)
        arrays.update(_arrays(name, pipe(generator=gen, show_progress_bar=False, **kwargs)))
    torch.manual_seed(0)
    pipe.set_mask_decoder(LightMaskDecoder.for_vae(pipe.vae, block_channels=[16, 16, 16]))
    arrays.update(_arrays("light", pipe(scenes[:2], generator=torch.Generator().manual_seed(0))))
    if one_step is not None:
        step = DiGSegPipeline.from_pretrained(one_step)
        step.set_progress_bar_config(disable=True)
        arrays.update(_arrays("one_step_palette", step(scenes[:2])))
        arrays.update(_arrays("one_step_per_class", step(scenes[0], classes=names[1:])))
    np.savez(out / "pipeline.npz", **arrays)
    (out / "threads.json").write_text(json.dumps({"torch_threads": torch.get_num_threads()}))

    folder = save_scenes_as_folder(data, out / "data")
    cli = out / "cli"
    runs = [
        ["eval", "--dataset", "folder", "--data-root", str(folder), "--val-fraction", "1", "--model", str(model),
         "--ensemble-size", "2", "--steps", "2", "--output", str(cli / "eval")],
        ["eval", "--dataset", "folder", "--data-root", str(folder), "--val-fraction", "1", "--predictions",
         str(cli / "eval" / "predictions"), "--output", str(cli / "eval_scored")],
        ["predict", "--model", str(model), "--image", str(folder / "images"), "--prompt", names[1],
         "--output", str(cli / "predict_binary")],
        ["predict", "--model", str(model), "--image", str(folder / "images"), "--classes", ",".join(names[1:]),
         "--output", str(cli / "predict_classes"), "--batch-size", "2"],
    ]
    for args in runs:
        code = main(args)
        if code not in (0, None):
            sys.exit(f"`digseg {' '.join(args)}` exited {code}")
    print(f"wrote {len(arrays)} arrays and {sum(1 for p in cli.rglob('*') if p.is_file())} CLI files to {out}")


def _normalised(path: Path, root: Path) -> bytes:
    """File contents with timings left out (JSON keys naming a time or rate; the timing text of index.html) and
    the snapshot folder's own path written as <root>."""
    raw = path.read_bytes().replace(str(root.resolve()).encode(), b"<root>").replace(str(root).encode(), b"<root>")
    if path.suffix == ".json":
        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if not TIMING_KEY.search(k)}
            if isinstance(value, list):
                return [strip(v) for v in value]
            return value
        return json.dumps(strip(json.loads(raw)), sort_keys=True).encode()
    if path.suffix == ".html":
        return re.sub(rb"\d+(\.\d+)? ?(s|ms|images?/s)\b", b"<t>", raw)
    return raw


def compare(a: Path, b: Path) -> int:
    left, right = np.load(a / "pipeline.npz"), np.load(b / "pipeline.npz")
    threads = [json.loads((p / "threads.json").read_text())["torch_threads"] if (p / "threads.json").is_file() else None
               for p in (a, b)]
    if threads[0] != threads[1]:
        print(f"note: written with {threads[0]} and {threads[1]} torch threads: float sums may differ by rounding")
    problems = []
    if set(left.files) != set(right.files):
        problems.append(f"arrays differ in names: {sorted(set(left.files) ^ set(right.files))}")
    for key in sorted(set(left.files) & set(right.files)):
        x, y = left[key], right[key]
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
            problems.append(f"{key}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}, "
                            f"max |diff| {np.abs(x.astype(float) - y.astype(float)).max() if x.shape == y.shape else 'n/a'}")
    files = {p.relative_to(a / "cli") for p in (a / "cli").rglob("*") if p.is_file()}
    other = {p.relative_to(b / "cli") for p in (b / "cli").rglob("*") if p.is_file()}
    if files != other:
        problems.append(f"CLI files differ in names: {sorted(map(str, files ^ other))}")
    for rel in sorted(files & other):
        if hashlib.sha256(_normalised(a / "cli" / rel, a)).digest() != hashlib.sha256(_normalised(b / "cli" / rel, b)).digest():
            problems.append(f"cli/{rel} differs")
    for line in problems:
        print(line)
    print(f"{len(left.files)} arrays, {len(files)} CLI files compared: "
          + ("IDENTICAL" if not problems else f"{len(problems)} difference(s)"))
    return 1 if problems else 0


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write")
    w.add_argument("model", type=Path)
    w.add_argument("out", type=Path)
    w.add_argument("--one-step", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.model, args.out, args.one_step)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main_())
