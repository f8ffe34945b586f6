"""The `digseg` command: quickstart | train | predict.

User errors (a missing file, a bad value) print one line, `error: ...`, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import ConfigError, DigsegError


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()  # per-file weight loading bars; ours stay
    diffusers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------- quickstart
def cmd_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import QuickstartSettings, run_quickstart

    settings = QuickstartSettings(seed=args.seed)
    if args.train_steps:
        settings.train_steps = args.train_steps
    run_quickstart(args.output, settings)


# ---------------------------------------------------------------------------------------------- train
_TRAIN_FLAGS = {  # flag -> (config key, type)
    "pretrained": str, "dataset": str, "data_root": str, "output": str, "max_steps": int, "batch_size": int,
    "learning_rate": float, "task": str, "prediction_type": str, "mixed_precision": str,
    "gradient_accumulation_steps": int, "checkpoint_every": int, "keep_checkpoints": int, "resolution": int,
    "seed": int,
}


def cmd_train(args: argparse.Namespace) -> None:
    from .data.registry import build_dataset
    from .pipeline import DiGSegPipeline
    from .training.config import TrainConfig
    from .training.trainer import Trainer

    overrides = {("output_dir" if k == "output" else k): getattr(args, k) for k in _TRAIN_FLAGS}
    if args.use_ema:
        overrides["use_ema"] = True
    if args.config:
        config = TrainConfig.load(args.config, overrides)
    else:
        config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    if not config.pretrained:
        raise ConfigError("no backbone: pass --pretrained (a Stable Diffusion folder or hub id, "
                          "e.g. the backbone/ folder `digseg quickstart` writes) or set `pretrained` in the config")
    pretrained = Path(config.pretrained)
    if (pretrained / "text_pathway").is_dir():  # continue training a DiGSeg model
        pipe = DiGSegPipeline.from_pretrained(pretrained)
    else:
        pipe = DiGSegPipeline.from_backbone(config.pretrained, prediction_type=config.prediction_type,
                                            prompt_template=config.prompt_template)
    config.resolution = config.resolution or pipe.config.default_processing_resolution  # 0 = native
    dataset = build_dataset(config.dataset, config.data_root, size=config.resolution,
                            num_scenes=config.num_scenes, seed=config.seed)
    names = config.class_names or list(dataset.class_names)
    if len(names) != len(dataset.class_names):
        raise ConfigError(f"config lists {len(names)} class names but dataset {config.dataset} has {len(dataset.class_names)}")
    config.class_names = names
    pipe.set_class_names(names)
    Trainer(config, pipe, dataset).train(resume=args.resume)
    print(f"saved trained model to {config.output_dir}")


# ---------------------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from .data.io import IMAGE_EXTENSIONS, load_image
    from .pipeline import DiGSegPipeline
    from .visualize import save_prediction

    if args.prompt is not None and args.classes is not None:
        raise ConfigError("give either --prompt or --classes, not both")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes is not None else None
    if classes is not None and not all(classes):
        raise ConfigError(f"--classes has an empty class name: {args.classes!r}")
    paths: list[Path] = []
    for item in args.image:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            paths.append(p)
    if not paths:
        raise ConfigError("no input images found")
    images = [load_image(p) for p in paths]  # fails early, naming the file, before the model loads
    pipe = DiGSegPipeline.from_pretrained(args.model)
    out_dir = Path(args.output)
    generator = torch.Generator().manual_seed(args.seed)
    summary = {}
    for path, image in zip(paths, images):
        result = pipe(image, prompt=args.prompt, classes=classes, ensemble_size=args.ensemble_size,
                      num_inference_steps=args.steps, processing_resolution=args.processing_resolution,
                      generator=generator, show_progress_bar=False)
        labels, probs = result.labels[0], result.probabilities[0]
        unc = result.uncertainty[0] if result.uncertainty is not None else None
        save_prediction(out_dir, path.stem, np.asarray(image), labels, probs, result.class_names, unc)
        counts = np.bincount(labels[labels < len(result.class_names)].ravel(), minlength=len(result.class_names))
        summary[path.name] = {name: round(float(n) / labels.size, 4) for name, n in zip(result.class_names, counts) if n}
        print(f"{path.name}: " + ", ".join(f"{k} {v:.1%}" for k, v in summary[path.name].items()))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote predictions for {len(paths)} image(s) to {out_dir}")


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digseg", description="Diffusion models as generalist, text-prompted segmenters.")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train a tiny model on synthetic scenes, evaluate, save overlays (CPU, minutes)")
    q.add_argument("--output", default="digseg-quickstart", help="output folder (default: ./digseg-quickstart)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--train-steps", type=int, default=None, help="DiGSeg training steps (default 2000)")
    q.set_defaults(func=cmd_quickstart)

    t = sub.add_parser("train", help="train DiGSeg from a Stable Diffusion backbone")
    t.add_argument("--config", help="YAML config; flags below override it")
    t.add_argument("--pretrained", help="Stable Diffusion folder or hub id (or a DiGSeg model folder to continue)")
    t.add_argument("--dataset", help="synthetic | folder (default synthetic)")
    t.add_argument("--data-root", help="dataset root folder")
    t.add_argument("--output", help="run folder: config.yaml, checkpoints/, the trained model")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--gradient-accumulation-steps", type=int)
    t.add_argument("--task", choices=["binary", "palette", "both"])
    t.add_argument("--prediction-type", choices=["sample", "v_prediction", "epsilon"])
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    t.add_argument("--resolution", type=int)
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--keep-checkpoints", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--use-ema", action="store_true")
    t.add_argument("--resume", help="'latest' or a checkpoint folder")
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("--model", required=True, help="a DiGSeg model folder (e.g. digseg-quickstart/model)")
    p.add_argument("--image", nargs="+", required=True, help="image files or folders")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="binary: segment what this text describes")
    group.add_argument("--classes", help="comma-separated class names (default: the model's own classes)")
    p.add_argument("--output", required=True)
    p.add_argument("--ensemble-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--processing-resolution", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except DigsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
