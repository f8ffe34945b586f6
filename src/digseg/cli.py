"""The `digseg` command: quickstart | train | cache-latents | browse-data | train-mask-decoder | predict | eval | demo.

User errors (a missing file, a bad value) print one line, `error: ...`, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import EXIT_SKIPPED, ConfigError, DigsegError
from .protocols import add_protocol_flags, parse_pair
from .training.config import MASK_DECODER_TARGETS, MASK_DECODERS, MIXED_PRECISION, OBJECTIVES, PREDICTION_TYPES, TASKS


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
# argparse dest -> the TrainConfig field (section, key) it sets. `_train_config` (train, cache-latents, browse-data)
# lays each dest given on the command line over the --config file: not None, and for store_true flags only when
# set; a dest its command lacks is skipped. --resolution and --no-augmentation are mapped there, not here.
_TRAIN_FLAGS = {
    "pretrained": ("model", "pretrained"), "prediction_type": ("model", "prediction_type"),
    "text_encoder": ("model", "text_encoder"), "objective": ("model", "objective"),
    "one_step_decoder": ("model", "one_step_decoder"),
    "dataset": ("data", "dataset"), "data_root": ("data", "data_root"), "num_scenes": ("data", "num_scenes"),
    "crop_size": ("data", "crop_size"), "task": ("data", "task"), "latent_cache": ("data", "latent_cache"),
    "num_workers": ("data", "num_workers"), "cache_latents": ("data", "cache_latents"),
    "max_steps": ("optim", "max_steps"), "batch_size": ("optim", "batch_size"),
    "learning_rate": ("optim", "learning_rate"), "gradient_accumulation_steps": ("optim", "gradient_accumulation_steps"),
    "mixed_precision": ("optim", "mixed_precision"), "use_ema": ("optim", "use_ema"),
    "gradient_checkpointing": ("optim", "gradient_checkpointing"),
    "output": ("run", "output_dir"), "checkpoint_every": ("run", "checkpoint_every"),
    "keep_checkpoints": ("run", "keep_checkpoints"), "seed": ("run", "seed"),
}


def _train_config(args: argparse.Namespace):
    """The --config file (if any) with the flags that were given on top."""
    from .training.config import TrainConfig

    if getattr(args, "crop_size", None) is not None:
        args.crop_size = list(args.crop_size)  # YAML (the run's config.yaml) holds lists, not tuples
    if getattr(args, "resolution", None) is not None:  # --resolution N: a square crop
        if getattr(args, "crop_size", None) is not None:
            raise ConfigError("give --resolution or --crop-size, not both")
        args.crop_size = [args.resolution, args.resolution]
    overrides: dict[str, dict] = {}
    for flag, (section, key) in _TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None and value is not False:  # store_true flags left off do not override the file
            overrides.setdefault(section, {})[key] = value
    if getattr(args, "no_augmentation", False):
        overrides.setdefault("data", {})["augmentation"] = False
    return TrainConfig.load(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from .training.run import build_run

    config = _train_config(args)
    build_run(config).train(resume=args.resume)
    print(f"saved trained model to {config.run.output_dir}")


def cmd_cache_latents(args: argparse.Namespace) -> None:
    from .training.latent_cache import build_latent_cache
    from .training.run import build_dataset, build_pipeline, build_training_data

    config = _train_config(args)
    if config.data.augments:
        raise ConfigError("cache-latents stores fixed samples: add --no-augmentation (and train with it too)")
    pipe = build_pipeline(config.model)
    dataset = build_dataset(config.data, config.run.seed)
    data = build_training_data(config.data, pipe, dataset, config.run.seed)
    out = build_latent_cache(dataset, data.batcher.class_names, pipe.vae, args.cache, data.crop_size[0],
                             task=config.data.task)
    print(f"wrote latents of {len(dataset)} samples to {out}; train with --latent-cache {out} --no-augmentation")


def cmd_browse_data(args: argparse.Namespace) -> None:
    from .training.browse import write_training_samples

    config = _train_config(args)
    written = write_training_samples(config, args.output, args.num)
    print(f"wrote {written} training samples, as the trainer sees them, to {args.output}")


def cmd_train_mask_decoder(args: argparse.Namespace) -> None:
    from .data.registry import build_dataset
    from .pipeline import DiGSegPipeline
    from .training.mask_decoder import fit_light_mask_decoder

    try:
        widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    except ValueError:
        raise ConfigError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
    pipe = DiGSegPipeline.from_pretrained(args.model)
    resolution = args.resolution or pipe.config.default_processing_resolution
    dataset = build_dataset(args.dataset, args.data_root, split="train", size=resolution,
                            num_scenes=args.num_scenes, seed=args.seed)
    _, losses, data = fit_light_mask_decoder(
        pipe, dataset, resolution, task=args.task, latent_cache=args.latent_cache, num_samples=args.num_samples,
        block_channels=widths,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        latent_noise=args.latent_noise, target=args.target, seed=args.seed)
    for reason in data.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    out = Path(args.output)
    if out.exists() and out.resolve() == Path(args.model).resolve():  # in place: only mask_decoder/ and the index
        pipe.mask_decoder.save_pretrained(out / "mask_decoder")  # the loaded weights may be memory-mapped
        pipe.save_config(out)  # model_index.json, now naming the mask decoder
    else:
        pipe.save_pretrained(out)
    print(f"light mask decoder: {len(data)} mask latents of {len(data.labels)} samples, {args.steps} steps, "
          f"final loss {sum(losses[-20:]) / len(losses[-20:]):.4f}; wrote the model with it to {args.output} "
          f"(it decodes masks by default; pass --mask-decoder vae to use the VAE)")


# ---------------------------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    """Checks the flags, the selection and the model before any work; the run itself is `predict.run_predict`."""
    from .data.io import read_class_list
    from .inputs import select_images
    from .pipeline import DiGSegPipeline
    from .predict import run_predict
    from .protocols import TestProtocol, protocol_from_args

    if args.prompt is not None and args.classes is not None:
        raise ConfigError("give either --prompt or --classes, not both")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes is not None else None
    if classes is not None and not all(classes):
        raise ConfigError(f"--classes has an empty class name: {args.classes!r}")
    if args.classes_file is not None:
        classes = read_class_list(args.classes_file)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = select_images(args.image, args.image_list)  # files, folders, patterns, a list file; nothing decoded yet
    protocol = protocol_from_args(args, TestProtocol())
    pipe = DiGSegPipeline.from_pretrained(args.model)
    settings = {
        "model": str(args.model), "prompt": args.prompt,
        "classes": None if args.prompt is not None else (classes or list(pipe.config.class_names or [])),
        "ensemble_size": args.ensemble_size, "steps": args.steps or pipe.config.default_denoising_steps,
        "seed": args.seed, "processing_resolution": args.processing_resolution
        if args.processing_resolution is not None else pipe.config.default_processing_resolution,
        "templates": args.templates, "top_k": args.top_k, "no_class_threshold": args.no_class_threshold,
        "mask_decoder": args.mask_decoder, "protocol": protocol.to_dict(),
    }
    call_kwargs = dict(prompt=args.prompt, classes=classes, ensemble_size=args.ensemble_size,
                       num_inference_steps=args.steps, processing_resolution=args.processing_resolution,
                       templates=args.templates, top_k=args.top_k, no_class_threshold=args.no_class_threshold,
                       mask_decoder=args.mask_decoder, **protocol.call_kwargs())
    result = run_predict(pipe, paths, Path(args.output), call_kwargs, settings, seed=args.seed,
                         batch_size=args.batch_size, skip_existing=args.skip_existing,
                         show_progress=False if args.no_progress else None)
    print(result.message())
    return result.exit_status


# ---------------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> None:
    from .data.base import MetricKind
    from .data.registry import get_dataset_class
    from .dataset_eval import SUMMARY_COLUMNS, default_protocol, predict_dataset, score_predictions, search_threshold
    from .distributed import is_main_process
    from .metrics import format_markdown_table

    if (args.predictions is None) == (args.model is None):
        raise ConfigError("give exactly one of --predictions DIR (score label PNGs) or --model DIR (predict, then score)")
    if not args.data_root:
        raise ConfigError("--data-root is required")
    dataset = get_dataset_class(args.dataset)(args.data_root, split=args.split)
    output = Path(args.output)
    predictions = Path(args.predictions) if args.predictions else output.with_suffix("").parent / f"{output.stem}_predictions"
    info: dict = {}
    if args.model:
        from .pipeline import DiGSegPipeline

        pipe = DiGSegPipeline.from_pretrained(args.model)
        if args.prompt_template:
            pipe.register_to_config(prompt_template=args.prompt_template)
        from .protocols import protocol_from_args

        protocol = protocol_from_args(args, default_protocol(pipe, dataset))
        kwargs = dict(ensemble_size=args.ensemble_size, num_inference_steps=args.steps, protocol=protocol,
                      processing_resolution=args.processing_resolution, seed=args.seed, mask_decoder=args.mask_decoder,
                      batch_size=args.batch_size)
        query = dict(top_k=args.top_k, templates=args.templates)
        threshold = 0.5
        if args.threshold_search:
            search_set = get_dataset_class(args.dataset)(args.data_root, split=args.search_split)
            threshold, dice = search_threshold(pipe, search_set, **kwargs)
            info["threshold_search"] = {"split": args.search_split, "threshold": threshold, "Dice": dice}
            if is_main_process():
                print(f"threshold search on {args.search_split}: {threshold:.2f} (Dice {dice:.2f})")
        report = predict_dataset(pipe, dataset, predictions, threshold=threshold, **kwargs, **query)
        info.update(model=str(args.model), ensemble_size=args.ensemble_size, steps=args.steps or pipe.config.default_denoising_steps,
                    predictions=str(predictions), prediction_skipped=report["skipped"], protocol=protocol.to_dict(),
                    batch_size=args.batch_size)
    metrics = score_predictions(dataset, predictions, present_only=True if args.present_only else None)
    metrics.update(info)
    if not is_main_process():  # under accelerate launch / torchrun: every process has the same metrics
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2))
    kind = MetricKind(metrics["metric"])
    row = {"dataset": f"{dataset.name} ({dataset.split})", **{c: metrics[c] for c in SUMMARY_COLUMNS[kind]},
           "images": metrics["num_images"]}
    print(format_markdown_table([row], list(row)))
    if kind is MetricKind.MEDICAL:
        for name, values in metrics["per_target"].items():
            print(f"  {name}: Dice {values['Dice']:.2f}  IoU {values['IoU']:.2f}")
    skipped = metrics["skipped"] + len(info.get("prediction_skipped", []))
    if skipped:
        print(f"skipped {skipped} sample(s) that could not be read; see 'skipped_samples' in {output}")
    print(f"wrote {output}")


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import DEFAULT_MAX_PIXELS, launch_demo

    launch_demo(args.model, host=args.host, port=args.port,
                max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels)


# ---------------------------------------------------------------------------------------------- parser
_PREDICT_EPILOG = f"""\
A file that cannot be read (missing, empty, not an image, truncated) is named on stderr and skipped; the
run goes on and lists it in summary.json and index.html. EXIF orientation is applied: outputs line up with
the image as viewers show it. Each image's files appear atomically; --skip-existing continues a run.

exit status:
  0    every image was predicted
  2    a user error (bad model, flags or image selection); nothing was predicted
  {EXIT_SKIPPED}    the run finished, but some files could not be read and were skipped
  130  interrupted (Ctrl-C); run again with --skip-existing to continue
  1    anything else (a crash, with a traceback)
"""

_MASK_DECODER_FLAG = dict(choices=MASK_DECODERS, default="auto",
                          help="decode masks with the model's light mask decoder or the VAE (auto: the decoder a "
                               "one-step model was trained through, else the light one when the model has one)")


def _add_quickstart(sub) -> None:
    """`digseg quickstart`."""
    q = sub.add_parser("quickstart", help="train a tiny model on synthetic scenes, evaluate, save overlays (CPU, minutes)")
    q.add_argument("--output", default="digseg-quickstart", help="output folder (default: ./digseg-quickstart)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--train-steps", type=int, default=None, help="DiGSeg training steps (default 2000)")
    q.set_defaults(func=cmd_quickstart)


def _add_train(sub) -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    """`digseg train`; returns the parser and its data-flag group, which cache-latents and browse-data share."""
    t = sub.add_parser("train", help="train DiGSeg from a Stable Diffusion backbone",
                       epilog="Config files hold the sections model, data, optim and run (docs/training.md).")
    data_flags = t.add_argument_group("data (config section `data`)")
    t.add_argument("--config", help="YAML config; flags below override it")
    t.add_argument("--pretrained", help="Stable Diffusion folder or hub id (or a DiGSeg model folder to continue)")
    data_flags.add_argument("--dataset", help="synthetic (default), folder, or a registered dataset name such as "
                                              "ade20k-150 (an unknown name's error lists them all)")
    data_flags.add_argument("--data-root", help="dataset root folder")
    data_flags.add_argument("--crop-size", type=parse_pair, metavar="H[,W]",
                            help="training crop (default: the dataset's preset, docs/augmentation.md)")
    data_flags.add_argument("--resolution", type=int, help="a square training crop: same as --crop-size N")
    data_flags.add_argument("--no-augmentation", action="store_true",
                            help="squash every sample to the crop instead of the dataset's augmentation")
    data_flags.add_argument("--num-workers", type=int, help="DataLoader workers reading and augmenting samples (default 0)")
    data_flags.add_argument("--num-scenes", type=int, help="synthetic dataset size (default 2000)")
    data_flags.add_argument("--task", choices=TASKS)
    data_flags.add_argument("--cache-latents", action="store_true", help="keep latents in memory (needs --no-augmentation)")
    data_flags.add_argument("--latent-cache", help="a folder from `digseg cache-latents` (needs --no-augmentation)")
    t.add_argument("--output", help="run folder: config.yaml, checkpoints/, the trained model")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--gradient-accumulation-steps", type=int)
    t.add_argument("--prediction-type", choices=PREDICTION_TYPES)
    t.add_argument("--objective", choices=OBJECTIVES,
                   help="diffusion (default: the paper's denoising MSE) or one-step (one deterministic pass trained "
                        "with cross-entropy on the labels; docs/training.md)")
    t.add_argument("--one-step-decoder", choices=MASK_DECODERS,
                   help="one-step: the mask decoder trained through (default auto: the light one if the model has one)")
    t.add_argument("--mixed-precision", choices=MIXED_PRECISION)
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--keep-checkpoints", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--text-encoder", help="another CLIP text encoder (folder or hub id), e.g. openai/clip-vit-large-patch14")
    t.add_argument("--use-ema", action="store_true")
    t.add_argument("--resume", help="'latest' or a checkpoint folder")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.set_defaults(func=cmd_train)
    return t, data_flags


def _add_cache_latents(sub, train: argparse.ArgumentParser, data_flags) -> None:
    """`digseg cache-latents`, with the model and data flags of `train`."""
    c = sub.add_parser("cache-latents", help="encode a training set's images and masks once with the frozen VAE")
    c.add_argument("--cache", required=True, help="output folder")
    for action in train._actions:  # the same model and data flags as `train`
        if action.dest in ("config", "pretrained", "text_encoder", "seed") or action in data_flags._group_actions:
            c._add_action(action)
    c.set_defaults(func=cmd_cache_latents)


def _add_browse_data(sub, train: argparse.ArgumentParser, data_flags) -> None:
    """`digseg browse-data`, with the model and data flags of `train`."""
    b = sub.add_parser("browse-data", help="write training samples exactly as the trainer sees them (augmented)")
    b.add_argument("--output", required=True, help="folder for <k>_image.png, <k>_label.png, <k>_overlay.png")
    b.add_argument("--num", type=int, default=16, help="how many samples (default 16)")
    for action in train._actions:  # the same data flags as `train`
        if action.dest in ("config", "seed", "batch_size") or action in data_flags._group_actions:
            b._add_action(action)
    b.set_defaults(func=cmd_browse_data)


def _add_train_mask_decoder(sub) -> None:
    """`digseg train-mask-decoder`."""
    m = sub.add_parser("train-mask-decoder", help="train a light mask decoder that replaces the VAE decoder for masks")
    m.add_argument("--model", required=True, help="a trained DiGSeg model folder")
    m.add_argument("--output", required=True, help="where to write the model with its mask_decoder/ (may be --model)")
    m.add_argument("--dataset", default="synthetic", help="the model's training dataset (default: synthetic)")
    m.add_argument("--data-root", help="dataset root folder")
    m.add_argument("--resolution", type=int, help="default: the model's processing resolution")
    m.add_argument("--num-scenes", type=int, default=2000, help="synthetic dataset size (default 2000)")
    m.add_argument("--num-samples", type=int, help="use the first N samples (default: all)")
    m.add_argument("--latent-cache", help="a folder from `digseg cache-latents` for the same VAE and resolution")
    m.add_argument("--task", choices=TASKS, default="both", help="which mask renderings")
    m.add_argument("--widths", help="channel widths, one per resolution, e.g. 64,32,16 (default 128,64,32[,16])")
    m.add_argument("--steps", type=int, default=2000)
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--learning-rate", type=float, default=1e-3)
    m.add_argument("--latent-noise", type=float, default=0.2, help="largest std of the noise added to training latents")
    m.add_argument("--target", choices=MASK_DECODER_TARGETS, default="mask",
                   help="learn the rendered mask (default) or imitate the VAE decoder's output (runs the VAE each step)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_train_mask_decoder)


def _add_predict(sub) -> None:
    """`digseg predict`."""
    p = sub.add_parser("predict", help="segment images with a trained model", epilog=_PREDICT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a DiGSeg model folder (e.g. digseg-quickstart/model)")
    p.add_argument("--image", nargs="+",
                   help="image files, folders or glob patterns (quoted: 'photos/*.jpg'; '**' spans folders)")
    p.add_argument("--image-list", help="a text file with one image path per line (with or instead of --image)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="binary: segment what this text describes")
    group.add_argument("--classes", help="comma-separated class names (default: the model's own classes)")
    group.add_argument("--classes-file", help="a text file with one class name per line ('wall, walls': synonyms; '#' comments)")
    p.add_argument("--templates", help="prompt templates: single | photo | ensemble, or one template with {}")
    p.add_argument("--top-k", type=int, default=None,
                   help="open vocabulary: rank all classes in one pass, then run exact queries for the top k only")
    p.add_argument("--no-class-threshold", type=float, default=None, help="label 255 where no class scores above this")
    p.add_argument("--output", required=True,
                   help="output folder: per-image maps and JSON, summary.json, index.html (see docs/predict.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images of the same processed size per pipeline call (same labels as 1; more memory)")
    p.add_argument("--skip-existing", action="store_true",
                   help="continue an interrupted run: keep images whose outputs are complete in --output")
    p.add_argument("--ensemble-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--processing-resolution", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-decoder", **_MASK_DECODER_FLAG)
    add_protocol_flags(p, "default: whole image at the processing resolution")
    p.set_defaults(func=cmd_predict)


def _add_eval(sub) -> None:
    """`digseg eval`."""
    e = sub.add_parser("eval", help="score label PNGs, or run a model over a dataset split and score it")
    e.add_argument("--dataset", required=True, help="a registered dataset name, e.g. ade20k-150, cityscapes, folder")
    e.add_argument("--data-root", help="the dataset's root folder, in its official layout")
    e.add_argument("--split", default="val")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--predictions", help="folder of <stem>.png label maps to score")
    src.add_argument("--model", help="a DiGSeg model folder: predict the split, then score")
    e.add_argument("--output", default="metrics.json", help="metrics JSON (predictions go beside it with --model)")
    e.add_argument("--ensemble-size", type=int, default=1)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--processing-resolution", type=int, default=None)
    e.add_argument("--prompt-template", help="override the model's prompt template, e.g. 'a photo of a {}.'")
    e.add_argument("--top-k", type=int, default=None, help="open vocabulary: exact queries for the k most relevant classes only")
    e.add_argument("--templates", help="prompt templates for per-class queries: single | photo | ensemble")
    e.add_argument("--present-only", action="store_true", help="mean over classes present in the ground truth (CAT-Seg)")
    e.add_argument("--threshold-search", action="store_true", help="binary datasets: pick the threshold on --search-split")
    e.add_argument("--search-split", default="val")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--mask-decoder", **_MASK_DECODER_FLAG)
    e.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    add_protocol_flags(e, "default: the dataset's preset, mmseg's or CAT-Seg's")
    e.set_defaults(func=cmd_eval)


def _add_demo(sub) -> None:
    """`digseg demo`."""
    d = sub.add_parser("demo", help="a local web app (Gradio) to try a model in the browser")
    d.add_argument("--model", default=None, help="a DiGSeg model folder (default: digseg-quickstart/model)")
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    d.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    d.add_argument("--max-pixels", type=int, default=None, help="largest upload, in pixels (default 4096x4096)")
    d.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digseg", description="Diffusion models as generalist, text-prompted segmenters.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_quickstart(sub)
    train, data_flags = _add_train(sub)
    _add_cache_latents(sub, train, data_flags)
    _add_browse_data(sub, train, data_flags)
    _add_train_mask_decoder(sub)
    _add_predict(sub)
    _add_eval(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from .distributed import shutdown

    try:
        status = args.func(args) or 0  # a command may return a non-zero status (predict: 3, files skipped)
    except DigsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        shutdown(wait=False)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        shutdown(wait=False)
        return 130
    shutdown()  # under torchrun / accelerate launch: leave the process group cleanly
    return status


if __name__ == "__main__":
    sys.exit(main())
