"""`digseg quickstart`: the whole method end to end on a CPU in minutes, on built-in synthetic scenes: a tiny
random Stable-Diffusion-layout backbone (its VAE trained on scenes and masks), DiGSeg trained on it, evaluated on
held-out scenes, with overlays. Every figure it prints is a tiny model on synthetic data, not the paper's accuracy."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes
from ..evaluation.estep import EStep, evaluate_binary, evaluate_palette
from ..evaluation.metrics import format_markdown_table
from ..models.tiny import save_tiny_backbone, tiny_vae
from ..training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from ..training.run import build_run
from ..training.vae import train_tiny_vae
from ..pipelines.visualize import overlay, side_by_side


@dataclass
class QuickstartSettings:
    seed: int = 0
    vae_steps: int = 400
    train_steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 5e-4
    num_train_scenes: int = 2000
    num_eval_scenes: int = 100
    settings: tuple[str, ...] = ("1x1", "1x2", "4x2")
    num_overlays: int = 8


def run_quickstart(output: str | Path, settings: QuickstartSettings | None = None, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> dict:
    """Train, evaluate and write overlays into `output`; training runs on accelerate's device, the evaluation and
    overlays on `device` in `dtype` (`digseg.devices`), and metrics.json records where ("runtime")."""
    s = settings or QuickstartSettings()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_set = SyntheticScenes(s.num_train_scenes, seed=s.seed)
    eval_set = SyntheticScenes(s.num_eval_scenes, seed=s.seed + 1)  # held out: another seed

    print(f"[1/4] tiny backbone + VAE training ({s.vae_steps} steps)", flush=True)
    torch.manual_seed(s.seed)
    vae = tiny_vae(seed=s.seed)
    vae_report = train_tiny_vae(vae, train_set, len(SYNTHETIC_CLASSES), steps=s.vae_steps, seed=s.seed)
    backbone = save_tiny_backbone(out / "backbone", seed=s.seed, vae=vae)
    print(f"      VAE reconstruction L1: masks {vae_report['mask_l1']:.3f}, images {vae_report['image_l1']:.3f}",
          flush=True)

    print(f"[2/4] DiGSeg training ({s.train_steps} steps, binary prompts + palette)", flush=True)
    config = TrainConfig(
        model=ModelConfig(pretrained=str(backbone)),
        # no augmentation: fixed 64 px scenes whose latents stay in memory (the 600 s budget on 2 cores)
        data=DataConfig(dataset="synthetic", num_scenes=s.num_train_scenes, crop_size=64, augmentation=False,
                        cache_latents=True),
        optim=OptimConfig(max_steps=s.train_steps, batch_size=s.batch_size, learning_rate=s.learning_rate,
                          lr_warmup_steps=50),
        run=RunConfig(output_dir=str(out / "model"), checkpoint_every=s.train_steps, keep_checkpoints=1, seed=s.seed),
    )
    pipe = build_run(config, dataset=train_set).train().to(device, dtype)
    train_done = time.perf_counter()

    print(f"[3/4] evaluation on {s.num_eval_scenes} held-out scenes", flush=True)
    metrics: dict = {"binary": {}, "palette": {}}
    for text in s.settings:
        setting = EStep.parse(text)
        metrics["binary"][text] = evaluate_binary(pipe, eval_set, setting, seed=s.seed)
        metrics["palette"][text] = evaluate_palette(pipe, eval_set, setting, seed=s.seed)

    print("[4/4] overlays", flush=True)
    overlays = out / "overlays"  # scene_<i>_palette.png: input | ground truth | prediction
    overlays.mkdir(exist_ok=True)
    k = len(eval_set.class_names)
    for i in range(min(s.num_overlays, len(eval_set))):
        image, label = eval_set.scene(i)
        rgb = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # [3, H, W]
        pred = pipe(rgb, generator=torch.Generator().manual_seed(s.seed), show_progress_bar=False).labels[0]
        side_by_side(overlay(image, np.zeros_like(label), k), overlay(image, label, k), overlay(image, pred, k)).resize(
            (3 * 192, 192), 0).save(overlays / f"scene_{i:03d}_palette.png")
        shape = eval_set.class_names[1 + i % (k - 1)]  # scene_<i>_<shape>.png: input | binary overlay
        binary = pipe(rgb, prompt=shape, generator=torch.Generator().manual_seed(s.seed),
                      show_progress_bar=False).labels[0]
        side_by_side(overlay(image, np.zeros_like(label), 2), overlay(image, binary, 2)).resize(
            (2 * 192, 192), 0).save(overlays / f"scene_{i:03d}_{shape}.png")
    wall = time.perf_counter() - started
    metrics.update(about="tiny random-initialised backbone trained from scratch on synthetic scenes (CPU); "
                         "not comparable with the paper's figures", runtime=pipe.runtime_info(),
                   wall_time_s=round(wall, 1), train_time_s=round(train_done - started, 1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    rows = [{"E-Step": text, "binary mIoU": b["mIoU"], "binary IoU fg": b["IoU_foreground"],
             "binary img/s": b["images_per_s"], "palette mIoU": p["mIoU"], "palette img/s": p["images_per_s"]}
            for text, b, p in zip(s.settings, metrics["binary"].values(), metrics["palette"].values())]
    print("\n" + format_markdown_table(rows, list(rows[0])))
    print(f"\n(tiny model, synthetic data; mIoU in percent)  wall time {wall:.0f} s")
    print(f"model: {out / 'model'}   overlays: {overlays}   metrics: {out / 'metrics.json'}")
    return metrics
