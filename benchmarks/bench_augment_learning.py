"""Why augmentation matters: one tiny model trained with and one without augmentation, then evaluated on
held-out synthetic scenes as drawn and with their objects at other scales and aspect ratios.

    python benchmarks/bench_augment_learning.py                  # 500 steps each: ~13 min on 2 CPU cores
    python benchmarks/bench_augment_learning.py --steps 1000     # ~16 min on a quiet machine
    python benchmarks/bench_augment_learning.py --quick          # smoke run, ~2 min
    python benchmarks/bench_augment_learning.py --runs augmented --augmentation '{"ratio_range": [0.5, 1.0]}'
                                                                 # one augmented run with preset overrides

1. As `digseg quickstart`: a tiny VAE trained on the training scenes (`train_tiny_vae`), then a tiny
   backbone with it (`save_tiny_backbone(vae=...)`). Both runs start from this same backbone.
2. Two runs of `build_run` over the same 64 px synthetic scenes, same seed, steps, batch and learning rate:
   `data.augmentation: false` (every scene as drawn; its latents cached, which changes no value) and
   `data.augmentation: true` (the `synthetic` preset: keep-ratio rescale 0.5-2x of the 64 px scene, random
   64 px crop with cat_max_ratio retries, padded where smaller, horizontal flip; no photometric distortion).
3. Evaluation (`evaluate_binary`, `evaluate_palette`, E-Step `--setting`) on held-out scenes (another seed):
   - plain: the scenes as drawn (the training distribution of the unaugmented run);
   - 0.5x: four scenes, each resized to 32x32, tiled 2x2 (objects at half size);
   - 2x: a scene resized to 128x128, a random 64x64 window (objects at twice the size, often cut by the edge);
   - per-axis 0.5-2x: per scene, a height factor and a width factor drawn independently, log-uniform in
     [0.5, 2]; four scenes so resized, tiled 2x2, a random 64x64 window (other scales and aspect ratios).
   Images are resized bilinearly, labels by nearest neighbour (PIL).

Every figure is a tiny random-initialised model on synthetic data, not the paper's accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from digseg.data.io import image_to_tensor
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from digseg.evaluation.estep import EStep, evaluate_binary, evaluate_palette
from digseg.models.tiny import save_tiny_backbone, tiny_vae
from digseg.training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from digseg.training.run import build_run
from digseg.training.vae import train_tiny_vae

from common import load_average

SIZE = 64  # the synthetic scenes' and the tiny model's size


def _resize(image: np.ndarray, label: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image [H, W, 3] and label [H, W] -> [height, width] (bilinear / nearest)."""
    pil = Image.fromarray(image).resize((width, height), Image.BILINEAR)
    lab = Image.fromarray(label.astype(np.uint8)).resize((width, height), Image.NEAREST)
    return np.asarray(pil), np.asarray(lab)


class RescaledScenes(Dataset):
    """Held-out scenes with their objects rescaled by per-axis factors (fy, fx); items as `SyntheticScenes`'.

    Scene i: four source scenes 4i..4i+3 of `SyntheticScenes(4 n, seed)`, each resized to
    (round(64 fy), round(64 fx)), tiled 2x2, then a uniformly placed 64x64 window of the mosaic. The factors
    are fixed (`factors=(fy, fx)`) or drawn per scene, each log-uniform in [low, high] (`factors=None`)."""

    ignore_index = 255

    def __init__(self, num_scenes: int, seed: int, factors: tuple[float, float] | None = None,
                 low: float = 0.5, high: float = 2.0) -> None:
        self.source = SyntheticScenes(4 * num_scenes, size=SIZE, seed=seed)
        self.num_scenes, self.seed, self.factors, self.low, self.high = num_scenes, seed, factors, low, high
        self.class_names = list(SYNTHETIC_CLASSES)

    def __len__(self) -> int:
        return self.num_scenes

    def scene(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, i, 1])
        fy, fx = self.factors or np.exp(rng.uniform(np.log(self.low), np.log(self.high), size=2))
        h, w = max(SIZE // 2, round(SIZE * fy)), max(SIZE // 2, round(SIZE * fx))
        tiles = [_resize(*self.source.scene(4 * i + k), h, w) for k in range(4)]
        image = np.concatenate([np.concatenate([tiles[0][0], tiles[1][0]], 1),
                                np.concatenate([tiles[2][0], tiles[3][0]], 1)], 0)  # [2h, 2w, 3]
        label = np.concatenate([np.concatenate([tiles[0][1], tiles[1][1]], 1),
                                np.concatenate([tiles[2][1], tiles[3][1]], 1)], 0)  # [2h, 2w]
        top, left = int(rng.integers(0, 2 * h - SIZE + 1)), int(rng.integers(0, 2 * w - SIZE + 1))
        return image[top:top + SIZE, left:left + SIZE], label[top:top + SIZE, left:left + SIZE]

    def __getitem__(self, i: int) -> dict:
        image, label = self.scene(int(i))
        return {"image": image_to_tensor(image), "label": torch.from_numpy(label.astype(np.int64)),
                "stem": f"rescaled_{i:05d}"}


def eval_sets(num_scenes: int, seed: int) -> dict[str, Dataset]:
    held_out = seed + 1  # as quickstart: another seed than training's
    return {
        "plain": SyntheticScenes(num_scenes, size=SIZE, seed=held_out),
        "0.5x (2x2 tiled)": RescaledScenes(num_scenes, held_out, factors=(0.5, 0.5)),
        "2x (window)": RescaledScenes(num_scenes, held_out, factors=(2.0, 2.0)),
        "per-axis 0.5-2x": RescaledScenes(num_scenes, held_out),
    }


def train(backbone: Path, train_set: SyntheticScenes, augment: bool | dict, args: argparse.Namespace, out: Path):
    config = TrainConfig(
        model=ModelConfig(pretrained=str(backbone)),
        data=DataConfig(dataset="synthetic", num_scenes=len(train_set), crop_size=SIZE, augmentation=augment,
                        cache_latents=augment is False),  # the cache changes no value, only the time
        optim=OptimConfig(max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr, lr_warmup_steps=50),
        run=RunConfig(output_dir=str(out), seed=args.seed, checkpoint_every=args.steps, keep_checkpoints=1,
                      log_with="none", sample_every=0),
    )
    torch.manual_seed(args.seed)  # the same initial widened U-Net and text pathway in both runs
    start = time.perf_counter()
    pipe = build_run(config, dataset=train_set, show_progress=args.progress).train()
    return pipe, time.perf_counter() - start


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(keys))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps of each run")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--train-scenes", type=int, default=2000)
    parser.add_argument("--eval-scenes", type=int, default=64)
    parser.add_argument("--setting", default="1x1", help="E-Step of the evaluation, ExK")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--save-examples", help="write a PNG of a few scenes of every evaluation set here")
    parser.add_argument("--progress", action="store_true", help="tqdm bars while training")
    parser.add_argument("--augmentation", type=json.loads, default=True,
                        help='data.augmentation of the augmented run: true (the synthetic preset) or JSON overrides, '
                             'e.g. \'{"ratio_range": [0.5, 1.0]}\'')
    parser.add_argument("--runs", choices=("both", "augmented", "plain"), default="both",
                        help="which of the two trainings to run (both for the comparison)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 steps, 40 VAE steps, 8 eval scenes")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.vae_steps, args.eval_scenes, args.train_scenes = 40, 40, 8, 200
    setting = EStep.parse(args.setting)
    started = time.perf_counter()
    print(f"# bench_augment_learning: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads; load average {load_average(' ')}")
    print(f"# args: {' '.join(sys.argv[1:]) or '(none)'} -> " + ", ".join(
        f"{k}={json.dumps(v) if k == 'augmentation' else v}" for k, v in vars(args).items()
        if k not in ("json", "progress", "save_examples")), flush=True)
    train_set = SyntheticScenes(args.train_scenes, size=SIZE, seed=args.seed)
    sets = eval_sets(args.eval_scenes, args.seed)
    if args.save_examples:
        rows = [np.concatenate([d.scene(i)[0] for i in range(6)], 1) for d in sets.values()]  # [64, 384, 3] each
        sheet = Image.fromarray(np.concatenate(rows, 0))  # one row of 6 scenes per evaluation set
        sheet.resize((6 * 128, len(rows) * 128), Image.NEAREST).save(args.save_examples)

    results: dict = {"args": vars(args), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-augment-learning-") as tmp:
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        vae = tiny_vae(seed=args.seed)
        vae_report = train_tiny_vae(vae, train_set, len(SYNTHETIC_CLASSES), steps=args.vae_steps, seed=args.seed,
                                    show_progress=args.progress)
        backbone = save_tiny_backbone(Path(tmp) / "backbone", seed=args.seed, vae=vae)
        vae_s = time.perf_counter() - t0
        print(f"# tiny VAE: {args.vae_steps} steps in {vae_s:.0f} s; reconstruction L1 masks "
              f"{vae_report['mask_l1']:.3f}, images {vae_report['image_l1']:.3f}; "
              f"load average {load_average(' ')}", flush=True)
        results["vae"] = {**vae_report, "seconds": round(vae_s, 1)}

        rows = []
        runs = {"both": (False, args.augmentation), "augmented": (args.augmentation,), "plain": (False,)}[args.runs]
        for augment in runs:
            name = "no augmentation" if augment is False else "augmentation"
            pipe, train_s = train(backbone, train_set, augment, args, Path(tmp) / name.replace(" ", "-"))
            print(f"# {name}: {args.steps} steps in {train_s:.0f} s ({args.steps / train_s:.2f} steps/s); "
                  f"load average {load_average(' ')}", flush=True)
            t1 = time.perf_counter()
            run = {"train_s": round(train_s, 1), "eval": {}}
            for set_name, dataset in sets.items():
                binary = evaluate_binary(pipe, dataset, setting, seed=args.seed)
                palette = evaluate_palette(pipe, dataset, setting, seed=args.seed)
                run["eval"][set_name] = {"binary_mIoU": binary["mIoU"], "binary_IoU_fg": binary["IoU_foreground"],
                                         "palette_mIoU": palette["mIoU"]}
                rows.append({"training": name, "eval set": set_name, "binary mIoU": binary["mIoU"],
                             "binary IoU fg": binary["IoU_foreground"], "palette mIoU": palette["mIoU"]})
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            run["eval_s"] = round(time.perf_counter() - t1, 1)
            results["runs"][name] = run

    wall = time.perf_counter() - started
    table = markdown(rows)
    deltas = []
    for set_name in sets if len(results["runs"]) == 2 else ():
        a, b = results["runs"]["augmentation"]["eval"][set_name], results["runs"]["no augmentation"]["eval"][set_name]
        deltas.append({"eval set": set_name, "binary mIoU: aug - no aug": a["binary_mIoU"] - b["binary_mIoU"],
                       "palette mIoU: aug - no aug": a["palette_mIoU"] - b["palette_mIoU"]})
    delta_table = markdown(deltas).replace("|---|---|---:|", "|---|---:|---:|") if deltas else ""
    print(f"\n(tiny model, synthetic data, {args.eval_scenes} held-out scenes per set, E-Step {setting}; "
          f"mIoU in percent)\n\n{table}\n\n{delta_table}\n\n# wall time {wall:.0f} s; "
          f"load average {load_average(' ')}")
    results.update(table=table, deltas=deltas, wall_s=round(wall, 1), load_average=os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
