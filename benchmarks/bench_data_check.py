"""What the data check before training costs: every sample of a folder dataset read once (`digseg.data.check`).

    python benchmarks/bench_data_check.py                    # 10,000 pairs of 64x64, workers 0 and 2
    python benchmarks/bench_data_check.py --images 500       # a quick run

Data: `--images` synthetic scenes (`--size` px) written as JPEG images (quality 90) and PNG label maps in the
`folder` layout, four of them broken (a truncated mask, a corrupt JPEG, a mask value outside the classes, a mask
of another size), read by the registered `folder` reader as a user's dataset is. Timed: `check_dataset` with a
fresh cache file (a full scan: decode image and mask, compare sizes and label values) in 0 and `--workers`
DataLoader workers, then again with the cache it wrote (a resume of an unchanged dataset: stat every file, read
the cache). Prints images/s of each and the ratio of workers to none; asserts that the four broken samples, and
only they, are found.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import load_average, machine_summary
from digseg.data.check import check_dataset
from digseg.data.domains import FolderPairs
from digseg.data.synthetic import SYNTHETIC_CLASSES, make_scene


def write_folder(root: Path, count: int, size: int) -> list[str]:
    """`count` pairs in the folder layout, four broken -> the stems of the broken ones."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in SYNTHETIC_CLASSES))
    for i in range(count):
        image, label = make_scene(np.random.default_rng([7, i]), size)
        Image.fromarray(image).save(root / "images" / f"{i:06d}.jpg", quality=90)
        Image.fromarray(label).save(root / "masks" / f"{i:06d}.png")
    broken = [f"{i:06d}" for i in (1, count // 3, count // 2, count - 2)]
    mask = root / "masks" / f"{broken[0]}.png"
    mask.write_bytes(mask.read_bytes()[:40])
    image = root / "images" / f"{broken[1]}.jpg"
    image.write_bytes(image.read_bytes()[:-100])
    Image.fromarray(np.full((size, size), 200, np.uint8)).save(root / "masks" / f"{broken[2]}.png")
    Image.fromarray(np.zeros((size // 2, size // 2), np.uint8)).save(root / "masks" / f"{broken[3]}.png")
    return broken


def timed_check(dataset, cache: Path, workers: int):
    start = time.perf_counter()
    check = check_dataset(dataset, cache, num_workers=workers, show_progress=False)
    return check, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {machine_summary()}; load average before: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        broken = write_folder(root, args.images, args.size)
        dataset = FolderPairs(root, split="train", split_file=None, val_fraction=0.0)
        n = len(dataset)
        rows = []
        for workers in (0, args.workers):
            cache = Path(tmp) / f"check-{workers}.json"
            check, seconds = timed_check(dataset, cache, workers)
            found = sorted(Path(b.name).stem for b in check.bad)
            assert found == sorted(broken), (found, broken)
            rows.append((f"scan, {workers} workers", seconds))
        _, cached = timed_check(FolderPairs(root, split="train", val_fraction=0.0), Path(tmp) / "check-0.json", 0)
        rows.append(("cached (a resume of unchanged files)", cached))
    print(f"\n{n} pairs of {args.size}x{args.size} px (JPEG + PNG), 4 broken, all 4 found\n")
    print("| check | seconds | images/s |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} |")
    print(f"\nworkers / none: {rows[0][1] / rows[1][1]:.2f}x faster; cached / full scan (0 workers): "
          f"{rows[0][1] / rows[2][1]:.0f}x faster")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
