"""LoRA against full fine-tuning, measured: accuracy on a shifted domain, trainable
parameters, size on disk per domain, and the time to switch adapters against loading a whole model.

    python benchmarks/bench_lora.py accuracy --work /tmp/bench_lora     # tiny backbone, synthetic data (minutes)
    python benchmarks/bench_lora.py switch --work /tmp/bench_lora       # after `accuracy`: tiny model folders
    python benchmarks/bench_lora.py switch --model sd2 --work /tmp/bench_lora_sd2   # SD2-sized random weights

accuracy
  1. A base model as `digseg quickstart` makes one: the tiny backbone, its VAE trained to reconstruct scenes and
     rendered masks, DiGSeg trained `--base-steps` on the built-in synthetic scenes (circle, square, triangle).
     The VAE stands in for Stable Diffusion's, which reconstructs any image: it is trained on scenes of both
     domains (and masks of 5 classes); the U-Net and text pathway of the base never see the shifted domain.
  2. The shifted domain (`ShiftedScenes`, below): checkerboard backgrounds instead of blotches and stripes, other
     colour families per kind, and a new class, "ring" (an annulus).
  3. From the base model, `--steps` steps on the shifted domain per setting (same data order, seed, learning rate,
     batch): full fine-tuning, LoRA rank 4 / 16 / 64 on the attention projections, rank 16 on attention + ResNet
     convolutions (conv1, conv2), and conv_in + text pathway only. The last is not an option of digseg: it is a
     LoRA run whose LoRA matrices are frozen (lora_B stays zero, so the U-Net computes what the base computes) --
     exactly the base U-Net with conv_in and the text pathway trained.
  4. Palette mIoU (E-Step 1x1) on held-out shifted scenes (another seed), the base model's too, and each
     setting's trainable parameters and the size of what it saves (adapter folder / model folder).

switch
  Load time of a whole DiGSeg model folder (`DiGSegPipeline.from_pretrained`) against `set_adapter` between two
  adapters already loaded on one backbone (and `load_adapter` of one folder), with the folders' sizes on disk.
  With `--model sd2` the backbone is SD2-sized with random weights (benchmarks/common.py) and the adapters are
  rank-16 attention LoRAs with random non-zero lora_B, saved as a run would save them.

Every figure printed is one run of this script on this machine; the accuracy is a tiny model on synthetic data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import load_average, machine_summary, random_backbone, trim_memory

from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes, _grid, _shape_mask
from digseg.evaluation.estep import EStep, evaluate_palette
from digseg.evaluation.metrics import format_markdown_table


# ------------------------------------------------------------------------------------------------ shifted domain
SHIFTED_CLASSES = (*SYNTHETIC_CLASSES, "ring")
_RING = 4
# RGB colour families per kind, other than the base domain's (circles warm, squares green/cyan, triangles blue/
# magenta/white): circles blue/cyan, squares red/orange, triangles yellow/green, rings magenta/white.
_SHIFTED_FAMILY = {
    1: [[40, 60, 230], [30, 220, 230]], 2: [[230, 30, 30], [250, 140, 20]],
    3: [[240, 220, 30], [30, 200, 40]], _RING: [[220, 40, 220], [245, 245, 245]],
}


def make_shifted_scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One scene of the shifted domain: uint8 image [S, S, 3] and uint8 label [S, S] (ids into SHIFTED_CLASSES)."""
    yy, xx, _ = _grid(size)
    a, b = rng.uniform(30.0, 225.0, size=(2, 3)).astype(np.float32)
    cell = rng.uniform(0.08, 0.2) * size
    checker = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2)[..., None]  # [S, S, 1]
    img = a + (b - a) * 0.5 * checker  # checkerboard of two colours, half contrast
    label = np.zeros((size, size), dtype=np.uint8)
    kinds = rng.choice([1, 2, 3, _RING], size=int(rng.integers(1, 4)), replace=False)
    for kind in kinds:
        r = rng.uniform(0.14, 0.25) * size
        cx, cy = rng.uniform(1.1 * r, size - 1.1 * r, size=2)
        if kind == _RING:
            d2 = (xx - cx) ** 2 + (yy - cy) ** 2
            mask = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
        else:
            mask = _shape_mask(int(kind), float(cx), float(cy), float(r), rng, size)
        family = _SHIFTED_FAMILY[int(kind)]
        img[mask] = np.asarray(family[int(rng.integers(len(family)))], np.float32)
        label[mask] = kind
    img += rng.normal(0.0, 5.0, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 255.0).round().astype(np.uint8), label


class ShiftedScenes(SyntheticScenes):
    """`SyntheticScenes` of the shifted domain (5 classes); scene i depends only on (seed, i)."""

    def __init__(self, num_scenes: int, size: int = 64, seed: int = 0) -> None:
        super().__init__(num_scenes, size, seed)
        self.class_names = list(SHIFTED_CLASSES)

    def scene(self, i: int):
        if i < 0:
            i += self.num_scenes
        if not 0 <= i < self.num_scenes:
            raise IndexError(f"scene index {i} out of range for {self.num_scenes} scenes")
        return make_shifted_scene(np.random.default_rng([self.seed, 1000, i]), self.size)


class _Both(torch.utils.data.Dataset):
    """Scenes of both domains, alternating (the stand-in VAE's training data)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __len__(self):
        return len(self.a) + len(self.b)

    def __getitem__(self, i):
        part = self.a if i % 2 == 0 else self.b
        return part[(i // 2) % len(part)]


# ------------------------------------------------------------------------------------------------ helpers
def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f}"


SETTINGS = {  # name -> (finetune, rank, targets, LoRA frozen)
    "full fine-tuning": ("full", None, None, False),
    "LoRA r4, attention": ("lora", 4, ["to_q", "to_k", "to_v", "to_out.0"], False),
    "LoRA r16, attention": ("lora", 16, ["to_q", "to_k", "to_v", "to_out.0"], False),
    "LoRA r64, attention": ("lora", 64, ["to_q", "to_k", "to_v", "to_out.0"], False),
    "LoRA r16, attention + convs": ("lora", 16, ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"], False),
    "conv_in + text pathway only": ("lora", 1, ["to_q"], True),
}


def _train(pretrained: str, dataset, out: Path, steps: int, batch: int, lr: float, seed: int,
           finetune: str = "full", rank: int | None = None, targets: list[str] | None = None,
           freeze_lora: bool = False):
    """One run from `pretrained` on `dataset` -> (trained pipeline, trainable parameters, seconds)."""
    import digseg.training.trainer as trainer_module
    from digseg.training.config import DataConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
    from digseg.training.run import build_run

    optim = OptimConfig(max_steps=steps, batch_size=batch, learning_rate=lr, lr_warmup_steps=min(50, steps // 5),
                        finetune=finetune)
    if finetune == "lora":
        optim.lora_rank, optim.lora_targets = rank, list(targets)
    config = TrainConfig(
        model=ModelConfig(pretrained=pretrained),
        data=DataConfig(dataset="synthetic", num_scenes=len(dataset), crop_size=64, augmentation=False,
                        cache_latents=True),
        optim=optim,
        run=RunConfig(output_dir=str(out), checkpoint_every=steps, keep_checkpoints=1, seed=seed),
    )
    original = trainer_module.begin_lora
    if freeze_lora:  # conv_in + text pathway only: the (zero-output) LoRA matrices never train
        def begin_frozen(unet, opt, run_seed):
            original(unet, opt, run_seed)
            for name, p in unet.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(False)
        trainer_module.begin_lora = begin_frozen
    try:
        trainer = build_run(config, dataset=dataset, show_progress=False)
        trainable = sum(p.numel() for p in trainer.params)
        start = time.perf_counter()
        pipe = trainer.train()
        seconds = time.perf_counter() - start
    finally:
        trainer_module.begin_lora = original
    return pipe, trainable, seconds


def accuracy(args) -> None:
    from digseg.models.tiny import save_tiny_backbone, tiny_vae
    from digseg.training.vae import train_tiny_vae

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_summary()}; load average before: {load_average()}", flush=True)
    started = time.perf_counter()
    base_train = SyntheticScenes(args.base_scenes, seed=args.seed)
    shifted_train = ShiftedScenes(args.scenes, seed=args.seed)
    shifted_eval = ShiftedScenes(args.eval_scenes, seed=args.seed + 1)  # held out: another seed
    setting = EStep.parse("1x1")

    base_model = work / "base" / "model"
    if not (base_model / "model_index.json").is_file():
        torch.manual_seed(args.seed)
        vae = tiny_vae(seed=args.seed)
        train_tiny_vae(vae, _Both(base_train, shifted_train), len(SHIFTED_CLASSES), steps=args.vae_steps,
                       seed=args.seed, show_progress=False)
        backbone = save_tiny_backbone(work / "base" / "backbone", seed=args.seed, vae=vae)
        t0 = time.perf_counter()
        _train(str(backbone), base_train, base_model, args.base_steps, 16, 5e-4, args.seed)
        print(f"base model: {args.base_steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    from digseg.pipelines.pipeline import DiGSegPipeline
    base = DiGSegPipeline.from_pretrained(str(base_model))
    own = evaluate_palette(base, SyntheticScenes(args.eval_scenes, seed=args.seed + 1), setting, seed=args.seed)
    # the base on the shifted domain: its palette has 4 classes, so "ring" pixels can only be wrong
    base.register_to_config(class_names=list(SHIFTED_CLASSES))
    try:
        shifted0 = evaluate_palette(base, shifted_eval, setting, seed=args.seed)["mIoU"]
    except Exception as exc:  # noqa: BLE001  (a base that cannot take 5 classes: say so)
        shifted0 = None
        print(f"base on the shifted domain: not evaluated ({exc})", flush=True)
    del base
    print(f"base model: palette mIoU {own['mIoU']:.1f} on its own held-out scenes, "
          f"{'n/a' if shifted0 is None else f'{shifted0:.1f}'} on the shifted domain", flush=True)

    rows, results = [], {}
    for name, (finetune, rank, targets, frozen) in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        out = work / "runs" / name.replace(" ", "_").replace(",", "").replace("+", "plus")
        shutil.rmtree(out, ignore_errors=True)
        trim_memory()
        pipe, trainable, seconds = _train(str(base_model), shifted_train, out, args.steps, args.batch, args.lr,
                                          args.seed, finetune, rank, targets, frozen)
        metrics = evaluate_palette(pipe, shifted_eval, setting, seed=args.seed)
        saved = out / "adapter" if finetune == "lora" else out
        size = folder_bytes(saved) - (folder_bytes(out / "checkpoints") if finetune == "full" else 0)
        ring = metrics["per_class"].get("ring") if isinstance(metrics["per_class"], dict) else None
        results[name] = {"mIoU": metrics["mIoU"], "per_class": metrics["per_class"], "trainable": trainable,
                         "train_s": seconds, "saved_bytes": size}
        rows.append({"setting": name, "held-out mIoU": f"{metrics['mIoU']:.1f}",
                     "ring IoU": "n/a" if ring is None else f"{ring:.1f}",
                     "trainable params": f"{trainable:,}", "saved (MiB)": mib(size), "train s": f"{seconds:.0f}"})
        print(f"{name}: mIoU {metrics['mIoU']:.1f}, {trainable:,} trainable, {seconds:.0f} s "
              f"(load {load_average()})", flush=True)
        del pipe
    print()
    print(format_markdown_table(rows, list(rows[0])))
    wall = time.perf_counter() - started
    print(f"\n(tiny model, synthetic data; palette mIoU in percent, E-Step 1x1, {args.eval_scenes} held-out shifted "
          f"scenes; {args.steps} steps at batch {args.batch}, lr {args.lr}; base {args.base_steps} steps)")
    print(f"wall time {wall:.0f} s; load average after: {load_average()}")
    (work / "accuracy.json").write_text(json.dumps({
        "args": vars(args), "base_own_mIoU": own["mIoU"], "base_shifted_mIoU": shifted0, "results": results,
        "machine": machine_summary(), "wall_s": wall}, indent=2, default=str))


# ------------------------------------------------------------------------------------------------ switch
def _sd2_adapters(work: Path, backbone_dir: Path | None) -> tuple[Path, list[Path]]:
    """SD2-sized random backbone, a DiGSeg model folder of it, and two rank-16 attention adapters (random lora_B)."""
    from digseg.models.adapters import TRAINED_ADAPTER, add_lora, lora_state_dict, save_adapter
    from digseg.pipelines.pipeline import DiGSegPipeline

    model = work / "model"
    adapters = [work / "adapter_a", work / "adapter_b"]
    if (model / "model_index.json").is_file() and all((a / "adapter_config.json").is_file() for a in adapters):
        return model, adapters
    backbone = random_backbone(backbone_dir or work / "backbone", "sd2")
    pipe = DiGSegPipeline.from_backbone(str(backbone), class_names=list(SYNTHETIC_CLASSES))
    pipe.save_pretrained(str(model))
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    for i, folder in enumerate(adapters):
        add_lora(pipe.unet, 16, None, targets, TRAINED_ADAPTER, seed=i)
        with torch.no_grad():
            for name, p in pipe.unet.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 1e-3)
        save_adapter(folder, lora_state_dict(pipe.unet, TRAINED_ADAPTER), pipe.current_parts(),
                     {"pretrained": str(model), "revision": None, "variant": None}, 16, None, targets)
        pipe.unet.delete_adapters(TRAINED_ADAPTER)
    if backbone_dir is None:
        shutil.rmtree(work / "backbone", ignore_errors=True)
    del pipe
    trim_memory()
    return model, adapters


def switch(args) -> None:
    from digseg.pipelines.pipeline import DiGSegPipeline

    work = Path(args.work)
    print(f"machine: {machine_summary()}; load average before: {load_average()}", flush=True)
    if args.model == "sd2":
        model, adapters = _sd2_adapters(work, args.backbone_dir)
        full_model = model
    else:  # the folders `accuracy` wrote
        model = work / "base" / "model"
        runs = work / "runs"
        adapters = [runs / "LoRA_r16_attention" / "adapter", runs / "LoRA_r4_attention" / "adapter"]
        full_model = runs / "full_fine-tuning"
    loads = []
    for _ in range(args.repeats):
        trim_memory()
        t0 = time.perf_counter()
        pipe = DiGSegPipeline.from_pretrained(str(full_model))
        loads.append(time.perf_counter() - t0)
        del pipe
    trim_memory()
    base = DiGSegPipeline.from_base(str(model))
    t0 = time.perf_counter()
    base.load_adapter(adapters[0], name="a", activate=False)
    load_adapter_s = time.perf_counter() - t0
    base.load_adapter(adapters[1], name="b", activate=False)
    switches = []
    for i in range(args.repeats * 10):
        t0 = time.perf_counter()
        base.set_adapter("a" if i % 2 == 0 else "b")
        switches.append(time.perf_counter() - t0)
    full_bytes = folder_bytes(full_model) - folder_bytes(full_model / "checkpoints") \
        if (full_model / "checkpoints").exists() else folder_bytes(full_model)
    rows = [
        {"what": "load a whole model folder (from_pretrained)", "seconds (median)": f"{statistics.median(loads):.3f}",
         "runs": len(loads), "folder on disk (MiB)": mib(full_bytes)},
        {"what": "load_adapter (one adapter folder)", "seconds (median)": f"{load_adapter_s:.3f}", "runs": 1,
         "folder on disk (MiB)": mib(folder_bytes(adapters[0]))},
        {"what": "set_adapter (switch between two loaded)", "seconds (median)": f"{statistics.median(switches):.4f}",
         "runs": len(switches), "folder on disk (MiB)": "-"},
    ]
    print(format_markdown_table(rows, list(rows[0])))
    print(f"\n({args.model}: {'SD2-sized random weights' if args.model == 'sd2' else 'tiny model'}; "
          f"whole-model loads {', '.join(f'{x:.2f}' for x in loads)} s; load average after: {load_average()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("accuracy", "switch"))
    parser.add_argument("--work", default="/tmp/bench_lora", help="folder for the models and runs (reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--base-scenes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200, help="steps per setting on the shifted domain")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--scenes", type=int, default=1000, help="shifted-domain training scenes")
    parser.add_argument("--eval-scenes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", nargs="*", help="settings to run (default: all)")
    parser.add_argument("--model", choices=("tiny", "sd2"), default="tiny", help="switch: the backbone")
    parser.add_argument("--backbone-dir", type=Path, default=None,
                        help="switch --model sd2: keep the random backbone here (bench_train_memory.py's is the same)")
    parser.add_argument("--repeats", type=int, default=3, help="switch: whole-model loads (x10 switches)")
    args = parser.parse_args()
    if args.threads:  # 1 on a loaded machine: OpenMP threads spin at barriers while others hold the cores
        torch.set_num_threads(args.threads)
    {"accuracy": accuracy, "switch": switch}[args.part](args)


if __name__ == "__main__":
    main()
