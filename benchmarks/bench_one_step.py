"""One-step fine-tuning against the diffusion model's E-Step ensembles: held-out accuracy and speed.

Accuracy (`--quickstart DIR --one-step DIR [DIR ...]`): the quickstart's diffusion model (DIR/model, `digseg
quickstart`) at the E-Step settings 1x1, 4x2 and 8x2; the same model read in one step with no fine-tuning (zero
input at t = T-1, its x0 prediction decoded by the VAE); and each one-step model trained from it (`digseg train
--pretrained DIR/model --objective one-step ...`), in one deterministic pass. On held-out synthetic scenes of
another seed than training (`--eval-seed`, default 1 as the quickstart's evaluation): palette mIoU (one pass over
the 4 classes) and binary mIoU (one query per shape), `digseg.evaluation.estep`. These are a tiny model on synthetic
data: they say whether the objective works, not what the paper reports.

Speed (`--speed`): seconds per image of each setting at SD2 size (SD2 U-Net + SD VAE, RANDOM weights, built by
`common.save_sd2_sized_backbone`, and a light mask decoder of random weights), palette query, fp32 on this
machine's CPU by default. The diffusion cells decode with the VAE; the one-step cell once with the VAE and once
with the light decoder. All cells run the same modules; the one-step ones only record the objective
(`pipe.register_to_config`). One untimed warm-up call per cell, then `--repeats` rounds over all cells; median
seconds per image.

    python benchmarks/bench_one_step.py --quickstart digseg-quickstart --one-step runs/one-step runs/one-step-light --speed
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from digseg import DiGSegPipeline
from digseg.data.synthetic import SyntheticScenes
from digseg.devices import resolve_dtype
from digseg.evaluation.estep import EStep, evaluate_binary, evaluate_palette
from digseg.models.mask_decoder import LightMaskDecoder

from common import load_average, machine_summary, random_backbone

DIFFUSION_SETTINGS = ("1x1", "4x2", "8x2")


def load(folder: Path) -> DiGSegPipeline:
    pipe = DiGSegPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def accuracy(quickstart: Path, one_step: list[Path], num_scenes: int, eval_seed: int, seed: int) -> list[dict]:
    """Rows (model, setting, palette mIoU, binary mIoU, binary fg IoU) on held-out scenes: the diffusion model at
    each E-Step, the same model read in one step without fine-tuning (zero input at T-1, its x0 prediction
    decoded by the VAE), and each one-step model."""
    scenes = SyntheticScenes(num_scenes, seed=eval_seed)
    rows = []

    def score(name: str, pipe: DiGSegPipeline, text: str) -> None:
        setting = EStep.parse(text)
        palette = evaluate_palette(pipe, scenes, setting, seed=seed)
        binary = evaluate_binary(pipe, scenes, setting, seed=seed)
        rows.append({"model": name, "setting": text, "palette_mIoU": palette["mIoU"], "binary_mIoU": binary["mIoU"],
                     "binary_IoU_fg": binary["IoU_foreground"]})
        print(f"{name:50s} {text:4s}  palette mIoU {palette['mIoU']:6.2f}  binary mIoU {binary['mIoU']:6.2f}", flush=True)

    diffusion = load(quickstart / "model")
    for text in DIFFUSION_SETTINGS:
        score("diffusion", diffusion, text)
    diffusion.register_to_config(objective="one-step", one_step_decoder="vae")  # the same weights, one pass
    score("diffusion read in one step (not fine-tuned)", diffusion, "1x1")
    for folder in one_step:
        pipe = load(folder)
        score(f"one-step {folder.name} ({pipe.config.one_step_decoder} decoder)", pipe, "1x1")
    return rows


@torch.no_grad()
def speed(size: int, repeats: int, dtype: str, backbone_dir: Path | None) -> list[dict]:
    """Seconds per image of diffusion 1x1/4x2/8x2 and one-step, same SD2-sized random modules."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_backbone(backbone_dir or Path(tmp) / "sd2", "sd2")
        pipe = DiGSegPipeline.from_backbone(folder, class_names=["background", "circle", "square", "triangle"],
                                            processing_resolution=size)
    pipe.to(dtype=resolve_dtype(dtype))  # every module, as bench_inference does
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    pipe.set_mask_decoder(LightMaskDecoder.for_vae(pipe.vae))  # random weights: speed only
    # (objective, E-Step, decoder): the diffusion cells decode with the VAE, as the paper does
    cells = [("diffusion", EStep.parse(s), "vae") for s in DIFFUSION_SETTINGS]
    cells += [("one-step", EStep(1, 1), "vae"), ("one-step", EStep(1, 1), "light")]

    def call(objective: str, setting: EStep, decoder: str) -> float:
        pipe.register_to_config(objective=objective, one_step_decoder=decoder if objective == "one-step" else None)
        start = time.perf_counter()
        pipe(image, ensemble_size=setting.ensemble_size, num_inference_steps=setting.steps, mask_decoder=decoder,
             generator=torch.Generator().manual_seed(0), show_progress_bar=False)
        return time.perf_counter() - start

    for cell in cells:
        call(*cell)  # warm-up
    times: dict[tuple, list[float]] = {cell: [] for cell in cells}
    for _ in range(repeats):
        for cell in cells:
            times[cell].append(call(*cell))
    rows = []
    one_step_s = statistics.median(times[("one-step", EStep(1, 1), "vae")])
    for (objective, setting, decoder), values in times.items():
        s = statistics.median(values)
        rows.append({"model": objective, "setting": str(setting), "decoder": decoder, "s_per_image": s,
                     "ratio_to_one_step_vae": s / one_step_s})
        print(f"{objective:9s} {str(setting):4s} {decoder:5s} decoder  {s:7.2f} s/image  "
              f"({s / one_step_s:.2f}x one-step with the VAE decoder)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quickstart", type=Path, help="a `digseg quickstart` output folder (its model/)")
    parser.add_argument("--one-step", type=Path, nargs="+", help="one-step model(s) trained from it")
    parser.add_argument("--num-scenes", type=int, default=100, help="held-out scenes (default 100, as the quickstart)")
    parser.add_argument("--eval-seed", type=int, default=1, help="scene seed of the held-out set (training used 0)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the diffusion model's ensembles")
    parser.add_argument("--speed", action="store_true", help="also time each setting at SD2 size (random weights)")
    parser.add_argument("--size", type=int, default=256, help="processing resolution of the speed cells")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbone-dir", type=Path, help="keep the SD2-sized random backbone here between runs")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if (args.quickstart is None) != (args.one_step is None):
        parser.error("give both --quickstart and --one-step (or neither, with --speed)")
    if args.quickstart is None and not args.speed:
        parser.error("nothing to measure: give --quickstart and --one-step, and/or --speed")
    started = time.perf_counter()
    print(f"{machine_summary()}; load {load_average()}", flush=True)
    result: dict = {}
    if args.quickstart is not None:
        print(f"held-out accuracy: {args.num_scenes} synthetic scenes of seed {args.eval_seed} (tiny model, mIoU in %)")
        result["accuracy"] = accuracy(args.quickstart, args.one_step, args.num_scenes, args.eval_seed, args.seed)
        rows = result["accuracy"]
        ensemble = next(r for r in rows if r["model"] == "diffusion" and r["setting"] == "8x2")["palette_mIoU"]
        for row in rows[len(DIFFUSION_SETTINGS):]:
            one = row["palette_mIoU"]
            print(f"{row['model']}: palette mIoU {one:.2f} vs the diffusion model's 8x2 {ensemble:.2f}: "
                  f"{'reaches' if one >= ensemble else 'below'} it ({one - ensemble:+.2f})")
    if args.speed:
        print(f"speed: SD2-sized model, RANDOM weights, {args.size} px, {args.dtype}, palette query, "
              f"{args.repeats} rounds (median)")
        result["speed"] = speed(args.size, args.repeats, args.dtype, args.backbone_dir)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"wall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
