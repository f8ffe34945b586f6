"""Does combining ensemble members in latent space (one decode) keep accuracy? Quickstart model, held-out scenes.

    digseg quickstart                                   # writes digseg-quickstart/model
    python benchmarks/bench_ensemble_decode.py --model digseg-quickstart/model

For each E-Step setting it segments the same held-out synthetic scenes with the same seed: members' latents
combined by element-wise median (digseg's default) or mean and decoded once, vs every member decoded and
probabilities averaged (as diffusers' Marigold pipeline does). Prints mIoU (binary prompts and palette),
images/s, the mIoU differences and the speed ratio, measured in one run. The goal is checked for the default
(median). Figures are a tiny model on synthetic data.
"""

from __future__ import annotations

import argparse

import torch

from digseg import DiGSegPipeline
from digseg.data.synthetic import SyntheticScenes
from digseg.evaluation.estep import EStep, evaluate_binary, evaluate_palette
from digseg.evaluation.metrics import format_markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digseg-quickstart/model")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--settings", default="4x2,8x2")
    parser.add_argument("--seed", type=int, default=0, help="the quickstart's held-out scenes use seed + 1")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = DiGSegPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    scenes = SyntheticScenes(args.scenes, seed=args.seed + 1)
    rows = []
    for text in args.settings.split(","):
        setting = EStep.parse(text)
        for name, evaluate in (("binary", evaluate_binary), ("palette", evaluate_palette)):
            median = evaluate(pipe, scenes, setting, decode_members=False, ensemble_reduction="median")
            mean = evaluate(pipe, scenes, setting, decode_members=False, ensemble_reduction="mean")
            each = evaluate(pipe, scenes, setting, decode_members=True)
            rows.append({
                "E-Step": text, "mode": name,
                "mIoU latent median": median["mIoU"], "mIoU latent mean": mean["mIoU"], "mIoU decode each": each["mIoU"],
                "diff median": median["mIoU"] - each["mIoU"], "diff mean": mean["mIoU"] - each["mIoU"],
                "img/s latent median": median["images_per_s"], "img/s decode each": each["images_per_s"],
                "speed ratio": median["images_per_s"] / each["images_per_s"],
            })
    print(format_markdown_table(rows, list(rows[0])))
    worst = max(abs(r["diff median"]) for r in rows)
    print(f"\nGOAL: mIoU (latent median, the default) within 1 point of the per-member-decode path -> "
          f"{'PASS' if worst <= 1.0 else 'FAIL'} (largest difference {worst:.2f}; "
          f"latent mean: {max(abs(r['diff mean']) for r in rows):.2f})")


if __name__ == "__main__":
    main()
