"""What each `digseg` command does (`COMMANDS`) and how it opens its model (`load_model`). User errors (a missing
file, a bad value) print one line, `error: ...`, and exit with status 2; no traceback."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from ..devices import resolve_device, resolve_device_and_dtype
from ..errors import ConfigError, DigsegError
from .parser import build_parser, parse_outputs


def load_model(model, placement, adapters: list[str] | None = None, use: str | None = None):
    """`model` loaded in the dtype and moved to the device of `placement` (torch.device, torch.dtype). An exported
    folder runs on CUDA's execution provider on a CUDA device, else the CPU's. With `adapters` (--adapter values):
    `model` is their base, each adapter is loaded onto it and `use` (default: the only one) is active."""
    from ..models.adapters import adapter_config
    from ..pipelines.pipeline import DiGSegPipeline
    from ..runtime.manifest import is_exported_folder
    from ..runtime.pipeline import OnnxDiGSegPipeline

    device, dtype = placement
    if not adapters:
        if use:
            raise ConfigError(f"--use-adapter {use}: no --adapter was given")
        if is_exported_folder(model):
            return OnnxDiGSegPipeline.from_pretrained(model, provider="cuda" if device.type == "cuda" else "cpu")
        return DiGSegPipeline.from_pretrained(model, dtype=dtype).to(device)
    named = parse_adapters(adapters)
    if use is None and len(named) > 1:
        raise ConfigError(f"several adapters ({', '.join(named)}): say which one predicts with --use-adapter NAME")
    use = use if use is not None else next(iter(named))
    if use not in named:
        raise ConfigError(f"--use-adapter {use}: no --adapter of that name (given: {', '.join(named)})")
    prediction_type = adapter_config(named[use]).get("prediction_type") or "sample"
    pipe = DiGSegPipeline.from_base(model, prediction_type=prediction_type, torch_dtype=dtype).to(device)
    for name, path in named.items():
        pipe.load_adapter(path, name=name, activate=False)
    pipe.set_adapter(use)
    return pipe


def parse_adapters(items: list[str]) -> dict[str, str]:
    """--adapter values ("NAME=PATH", or "PATH": named after its folder) -> {name: path}."""
    named: dict[str, str] = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq:
            name, path = Path(item).name, item
        if not name or not path:
            raise ConfigError(f"--adapter takes NAME=PATH or PATH, got {item!r}")
        if name in named:
            raise ConfigError(f"--adapter: two adapters named {name!r}; name them apart with NAME=PATH")
        named[name] = path
    return named


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    import diffusers.utils.logging
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()  # per-file weight loading bars; ours stay
    diffusers.utils.logging.disable_progress_bar()


def cmd_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import QuickstartSettings, run_quickstart

    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # accelerate's own switch (`accelerate launch --cpu`): train here too
    settings = QuickstartSettings(seed=args.seed)
    if args.max_steps:
        settings.train_steps = args.max_steps
    run_quickstart(args.output, settings, device=device, dtype=dtype)


# A flag named after a TrainConfig field sets that field (--learning-rate: optim.learning_rate); these two keep the
# names users know from other tools.
_FLAG_ALIASES = {"output": ("run", "output_dir"), "dtype": ("optim", "mixed_precision")}


def _train_config(args: argparse.Namespace):
    """The --config file (or a resumed run's own config.yaml), --cfg-options, and the flags given, on top."""
    from ..training.config import SECTIONS, RunConfig, TrainConfig, parse_overrides

    if args.crop_size is not None:
        args.crop_size = list(args.crop_size)  # YAML (the run's config.yaml) holds lists, not tuples
    overrides = parse_overrides(args.cfg_options or [])
    sections = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    for dest, value in vars(args).items():
        section, key = _FLAG_ALIASES.get(dest, (sections.get(dest), dest))
        if section is None or value is None:  # a flag left off does not override the file
            continue
        if dest == "dtype":  # a --dtype choice as optim.mixed_precision; auto: "" (the launcher's, else the best)
            value = {"auto": "", "fp32": "no"}.get(value, value)
        if key in overrides.get(section, {}):
            raise ConfigError(f"{section}.{key} is given twice: by --cfg-options and by its own flag")
        overrides.setdefault(section, {})[key] = value
    config_file = args.config
    if not config_file and getattr(args, "resume", None):  # only `train` resumes: RUN/config.yaml, its values
        run = Path(args.resume).parent.parent if args.resume != "latest" else Path(args.output or RunConfig.output_dir)
        config_file = str(run / "config.yaml") if (run / "config.yaml").is_file() else None
    return TrainConfig.load(config_file, overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from ..distributed import is_main_process
    from ..training.run import build_run
    from ..run_lock import TRAIN, main_process_holds

    device = resolve_device(args.device)  # accelerate places each process: its launcher's GPU, else the GPU, else CPU
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # as `accelerate launch --cpu` does
    elif device.index not in (None, int(os.environ.get("LOCAL_RANK", "0"))):
        raise ConfigError(f"--device {args.device}: training runs each process on the GPU its launcher gives it; "
                          f"choose the GPU with CUDA_VISIBLE_DEVICES={device.index} and --device cuda")
    config = _train_config(args)
    if config.run.push_to_hub:
        from ..training.hub import check_hub_target, push_to_hub

        check_hub_target(config.run.push_to_hub)  # before training, not after it
    with main_process_holds(config.run.output_dir, TRAIN):  # a second run on this folder stops here, every process
        build_run(config, resume=args.resume, allow_config_change=args.allow_config_change).train()
    if not is_main_process():
        return
    print(f"saved trained model to {config.run.output_dir}")
    if config.run.push_to_hub:
        url = push_to_hub(config.run.output_dir, config.run.push_to_hub, private=config.run.hub_private)
        print(f"pushed the model to {url}")


def _hf_options(args: argparse.Namespace):
    """--hf of eval and train-mask-decoder (`digseg.data.hf_options`); None for datasets other than hf:."""
    from ..data.hf_options import hf_options, parse_hf_pairs

    given = args.hf if isinstance(args.hf, dict) else parse_hf_pairs(args.hf)  # a dict: the model's record
    return hf_options(args.dataset, given, "--hf")


def cmd_cache_latents(args: argparse.Namespace) -> None:
    from ..training.latent_cache import build_latent_cache
    from ..training.run import build_dataset, build_pipeline, build_training_data, checked_dataset

    config = _train_config(args)
    if config.data.augments:
        raise ConfigError("cache-latents stores fixed samples: add --cfg-options data.augmentation=false (and train "
                          "with it too)")
    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    dataset, _ = checked_dataset(config.data, build_dataset(config.data, config.run.seed), None)  # before the model
    pipe = build_pipeline(config.model)
    pipe.vae.to(device, dtype)  # the frozen VAE encodes there; latents are stored in fp32
    data = build_training_data(config.data, pipe, dataset, config.run.seed)
    out = build_latent_cache(dataset, data.batcher.class_names, pipe.vae, args.output, data.crop_size[0],
                             task=config.data.task)
    print(f"wrote latents of {len(dataset)} samples to {out}; train with --cfg-options data.latent_cache={out} "
          "data.augmentation=false")


def cmd_browse_data(args: argparse.Namespace) -> None:
    from ..training.run import write_training_samples

    written = write_training_samples(_train_config(args), args.output, args.num)
    print(f"wrote {written} training samples, as the trainer sees them, to {args.output}")


def cmd_check_data(args: argparse.Namespace) -> int:
    """List every bad sample of the training and validation splits -> 0 when every sample is good, 1 otherwise."""
    from ..training.run import build_dataset, checked_dataset

    config = _train_config(args)
    run_dir = args.output or (config.run.output_dir if args.config else None)  # where `digseg train` will look
    found = 0
    for split in ("train", "val"):
        try:
            dataset = build_dataset(config.data, config.run.seed, split=split)
        except DigsegError as exc:
            if split == "train":
                raise
            print(f"val: not checked ({exc})")
            continue
        _, check = checked_dataset(dataclasses.replace(config.data, bad_samples="skip"), dataset, run_dir, split)
        if check is None:
            print(f"{split}: {config.data.dataset} is generated, not read from storage: nothing to check")
            continue
        found += len(check.bad)
        print(f"{split}: {len(check.names)} samples, {len(check.bad)} bad" + (":" if check.bad else ""))
        for bad in check.bad:
            print(f"  {bad.problem}")
    if found:
        print("train with --bad-samples skip to leave them out, or fix them and check again")
    return 1 if found else 0


def _model_data_flags(args: argparse.Namespace) -> int:
    """train-mask-decoder's data flags left out: the model's training data (`digseg.data.model_data`) when --dataset
    is left out or names it (the split flags as a pair), else synthetic scenes -> the seed of synthetic scenes."""
    from ..data.model_data import model_training_data
    from ..training.config import DataConfig

    record = model_training_data(args.model)
    if record is not None and record.same_data(args.dataset or record.dataset, args.data_root or record.data_root):
        split_given = args.val_fraction is not None or args.split_file is not None
        for flag, value in record.flag_defaults().items():
            if getattr(args, flag, 0) is None and not (split_given and flag in ("val_fraction", "split_file")):
                setattr(args, flag, value)
        if record.dataset == "synthetic" and record.seed is not None:
            return record.seed
    args.dataset = args.dataset or "synthetic"
    args.num_scenes = DataConfig.num_scenes if args.num_scenes is None else args.num_scenes
    return args.seed


def cmd_train_mask_decoder(args: argparse.Namespace) -> None:
    from ..data.check import check_dataset, keep_good
    from ..data.registry import build_dataset
    from ..pipelines.model_card import model_facts, read_card_facts, write_model_card
    from ..pipelines.model_folder import configured_setting
    from ..training.mask_decoder import fit_light_mask_decoder

    placement = resolve_device_and_dtype(args.device, args.dtype)
    try:
        widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    except ValueError:
        raise ConfigError(f"--widths must be comma-separated integers, got {args.widths!r}") from None
    data_seed = _model_data_flags(args)
    hf = _hf_options(args)
    # the data before the model, at the resolution of its model_index.json (a hub model not cached yet: after it loads)
    resolution = args.processing_resolution or configured_setting(args.model, "default_processing_resolution")
    train_split = functools.partial(build_dataset, args.dataset, args.data_root, split="train",
                                    num_scenes=args.num_scenes, seed=data_seed, hf=hf, val_fraction=args.val_fraction,
                                    train_split_file=args.split_file)
    dataset = train_split(size=resolution)
    check = check_dataset(dataset)
    dataset = keep_good(dataset, check, args.bad_samples, "train split")
    pipe = load_model(args.model, placement)
    if not resolution:
        resolution = pipe.config.default_processing_resolution
        dataset = keep_good(train_split(size=resolution), check, args.bad_samples, "train split")
    decoder, losses, data = fit_light_mask_decoder(
        pipe, dataset, resolution, task=args.task, latent_cache=args.latent_cache, num_samples=args.num_samples,
        block_channels=widths, steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        latent_noise=args.latent_noise, target=args.target, seed=args.seed)
    for reason in data.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    # a copy of the model's files (whatever --dtype it ran in), then mask_decoder/ (fp32) and model_index.json naming it
    out = Path(args.output)
    if not (out.exists() and out.resolve() == Path(args.model).resolve()):
        shutil.copytree(args.model, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("mask_decoder"))
    shutil.rmtree(out / "mask_decoder", ignore_errors=True)
    decoder.save_pretrained(out / "mask_decoder")
    pipe.save_config(out)
    final_loss = sum(losses[-20:]) / len(losses[-20:])
    write_model_card(out, {**read_card_facts(out), "model": model_facts(pipe), "mask_decoder_training": {
        "dataset": args.dataset + (f" ({args.data_root})" if args.data_root else ""), "samples": len(data.labels),
        "steps": args.max_steps, "target": args.target, "resolution": resolution, "final_loss": round(final_loss, 5)}})
    print(f"light mask decoder: {len(data)} mask latents of {len(data.labels)} samples, {args.max_steps} steps, "
          f"final loss {final_loss:.4f}; wrote the model with it to {args.output} "
          f"(it decodes masks by default; pass --mask-decoder vae to use the VAE)")


def cmd_predict(args: argparse.Namespace) -> int:
    """Checks the flags and the selection, then, holding the output folder's lock, loads the model and runs
    `run_predict` once per adapter the inputs name (with several, each into `<output>/<adapter name>/`)."""
    from ..data.io import read_class_list
    from ..distributed import is_main_process
    from ..run_lock import PREDICT, main_process_holds
    from .predict import images_by_adapter, run_predict
    from ..evaluation.protocols import TestProtocol, protocol_from_args, tiling_scale

    placement = resolve_device_and_dtype(args.device, args.dtype)
    classes = read_class_list(args.classes_file) if args.classes_file is not None else None
    if args.classes is not None and not all(classes := [c.strip() for c in args.classes.split(",")]):
        raise ConfigError(f"--classes has an empty class name: {args.classes!r}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    outputs = parse_outputs(args.outputs)
    adapters = parse_adapters(args.adapter) if args.adapter else {}
    groups = images_by_adapter(args.image, args.image_list, adapters, args.use_adapter)  # nothing decoded yet
    asked = protocol_from_args(args, TestProtocol())
    query = dict(templates=args.templates, top_k=args.top_k, no_class_threshold=args.no_class_threshold,
                 mask_decoder=args.mask_decoder)
    results = []
    with main_process_holds(args.output, PREDICT):
        # group None: inputs naming no adapter, where no --use-adapter chose one: load_model's error when several
        use = None if None in groups else args.use_adapter or next(iter(groups))
        pipe = load_model(args.model, placement, args.adapter, use)
        for name, paths in groups.items():
            if adapters:
                pipe.set_adapter(name)  # its LoRA, classes and resolution; the backbone stays loaded
            protocol = tiling_scale(asked, pipe.config.default_processing_resolution,
                                    args.processing_resolution is not None)
            settings = {  # the order of <stem>_summary.json
                "model": str(args.model), "prompt": args.prompt,
                **({"adapter": name, "adapters": adapters} if adapters else {}),
                "classes": None if args.prompt is not None else (classes or list(pipe.config.class_names or [])),
                "ensemble_size": args.ensemble_size, "steps": args.steps or pipe.config.default_denoising_steps,
                "seed": args.seed, "processing_resolution": args.processing_resolution
                if args.processing_resolution is not None else pipe.config.default_processing_resolution,
                **query, "protocol": dataclasses.asdict(protocol)}
            call_kwargs = dict(prompt=args.prompt, classes=classes, ensemble_size=args.ensemble_size,
                               num_inference_steps=args.steps, processing_resolution=args.processing_resolution,
                               **query, **protocol.call_kwargs())
            output = Path(args.output) / name if len(groups) > 1 else Path(args.output)
            results.append(run_predict(pipe, paths, output, call_kwargs, settings, seed=args.seed,
                                       batch_size=args.batch_size, skip_existing=args.skip_existing,
                                       show_progress=False if args.no_progress else None, outputs=outputs))
    if is_main_process():
        print("\n".join(f"{name}: " * (len(groups) > 1) + result.message() for name, result in zip(groups, results)))
    return max(result.exit_status for result in results)


def cmd_eval(args: argparse.Namespace) -> None:
    from ..data.base import MetricKind
    from ..data.model_data import EVAL_SPLIT_FLAGS, model_training_data
    from ..data.registry import read_dataset
    from ..evaluation.dataset_eval import (SUMMARY_COLUMNS, default_protocol, predict_dataset, score_predictions,
                                           search_threshold)
    from ..distributed import is_main_process, process_info
    from ..evaluation.metrics import format_markdown_table
    from ..evaluation.protocols import protocol_from_args, tiling_scale

    if (args.predictions is None) == (args.model is None):
        raise ConfigError("give exactly one of --predictions DIR (label PNGs) or --model DIR (predict, then score)")
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file: eval's --output is a folder, holding metrics.json "
                          "(and the predicted label PNGs in predictions/ with --model)")
    placement = resolve_device_and_dtype(args.device, args.dtype) if args.model else None
    reader = dict(val_fraction=args.val_fraction, split_file=args.split_file, hf=_hf_options(args))
    if args.adapter and not args.model:
        raise ConfigError("--adapter is loaded onto --model (its base): give --model too")
    # the model's split rule on its own data (`digseg.data.model_data`); an adapter's data is not its base's
    record = model_training_data(args.model) if args.model and not args.adapter else None
    if record is not None:
        reader.update(record.default_reader(args.dataset, args.data_root,
                                            {flag: getattr(args, flag) for flag in EVAL_SPLIT_FLAGS}))
    dataset = read_dataset(args.dataset, args.data_root, split=args.split, **reader)
    search_set = (read_dataset(args.dataset, args.data_root, split=args.search_split, **reader)  # before the model
                  if args.model and args.threshold_search else None)
    warning = record.overlap_warning(dataset) if record is not None else None
    if warning and is_main_process():
        print(warning, file=sys.stderr)
    predictions = Path(args.predictions) if args.predictions else output / "predictions"
    info: dict = {}
    if args.model:
        pipe = load_model(args.model, placement, [args.adapter] if args.adapter else None)
        protocol = tiling_scale(protocol_from_args(args, default_protocol(pipe, dataset)),
                                pipe.config.default_processing_resolution, args.processing_resolution is not None)
        kwargs = dict(ensemble_size=args.ensemble_size, num_inference_steps=args.steps, protocol=protocol,
                      processing_resolution=args.processing_resolution, seed=args.seed, mask_decoder=args.mask_decoder,
                      batch_size=args.batch_size)
        query = dict(top_k=args.top_k, templates=args.templates)
        threshold = 0.5
        if search_set is not None:
            threshold, dice = search_threshold(pipe, search_set, **kwargs)
            info["threshold_search"] = {"split": args.search_split, "threshold": threshold, "Dice": dice}
            if is_main_process():
                print(f"threshold search on {args.search_split}: {threshold:.2f} (Dice {dice:.2f})")
        report = predict_dataset(pipe, dataset, predictions, threshold=threshold, **kwargs, **query)
        info.update(model=str(args.model), ensemble_size=args.ensemble_size,
                    steps=args.steps or pipe.config.default_denoising_steps, predictions=str(predictions),
                    prediction_skipped=report["skipped"], protocol=dataclasses.asdict(protocol),
                    batch_size=args.batch_size, runtime=pipe.runtime_info(process_info()[1]))
    metrics = score_predictions(dataset, predictions, present_only=True if args.present_only else None)
    metrics.update(info)
    if not is_main_process():  # under accelerate launch / torchrun: every process has the same metrics
        return
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    kind = MetricKind(metrics["metric"])
    row = {"dataset": f"{dataset.name} ({dataset.split})", **{c: metrics[c] for c in SUMMARY_COLUMNS[kind]},
           "images": metrics["num_images"]}
    print(format_markdown_table([row], list(row)))
    if kind is MetricKind.MEDICAL:
        for name, values in metrics["per_target"].items():
            print(f"  {name}: Dice {values['Dice']:.2f}  IoU {values['IoU']:.2f}")
    skipped = metrics["skipped"] + len(info.get("prediction_skipped", []))
    if skipped:
        print(f"skipped {skipped} sample(s) that could not be read; see 'skipped_samples' in {output / 'metrics.json'}")
    print(f"wrote {output / 'metrics.json'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import launch_demo

    launch_demo(args.model, host=args.host, port=args.port, max_pixels=args.max_pixels, device=args.device,
                dtype=args.dtype, adapters=args.adapter)


def cmd_export(args: argparse.Namespace) -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"digseg export needs {', '.join(missing)}: pip install -e '.[onnx]'")
    import torch

    from ..export.onnx_export import export_pipeline, precompute_own_prompts, quantize_folder
    from ..pipelines.pipeline import DiGSegPipeline
    from ..runtime.manifest import is_exported_folder

    dtype = "fp32" if args.dtype == "auto" else args.dtype
    if dtype not in ("fp32", "fp16"):
        raise ConfigError(f"--dtype {dtype}: export writes fp32 or fp16 graphs")
    if dtype == "fp16" and args.quantize:  # checked before the model loads, as the next
        raise ConfigError("--quantize int8 applies to fp32 graphs; use --dtype fp32")
    if dtype == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--dtype fp16 needs a CUDA GPU (fp16 graphs are exported on one); use --dtype fp32")
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not an empty folder; choose a new one")
    if is_exported_folder(args.model):  # an export made smaller as it is: nothing exported again
        if not (args.quantize or args.no_text_encoder):
            raise ConfigError(f"--model {args.model} is already exported; --quantize int8 quantizes it and "
                              "--no-text-encoder precomputes its own prompts")
        with tempfile.TemporaryDirectory() as tmp:
            source = args.model
            if args.no_text_encoder:  # then quantized, when asked, from a temporary folder
                source = precompute_own_prompts(source, Path(tmp) / "own" if args.quantize else output)
            folder = quantize_folder(source, output) if args.quantize else source
        done = [*(["own prompts precomputed"] if args.no_text_encoder else []),
                *(["int8 matrix multiplies"] if args.quantize else [])]
        print(f"wrote {folder} from {args.model} ({', '.join(done)})")
        return
    pipe = DiGSegPipeline.from_pretrained(args.model)  # fp32 on the CPU; export_pipeline moves it for fp16
    folder = export_pipeline(pipe, output, dtype=dtype, text_encoder=not args.no_text_encoder, quantize=args.quantize)
    graphs = sorted(p.name for p in folder.glob("*.onnx"))
    print(f"exported {args.model} to {folder}: {', '.join(graphs)} and manifest.json "
          f"({dtype}{', int8 matrix multiplies' if args.quantize else ''})")


COMMANDS = {  # command name -> what it does; the arguments are in `digseg.cli.parser`
    "quickstart": cmd_quickstart, "train": cmd_train, "cache-latents": cmd_cache_latents,
    "browse-data": cmd_browse_data, "check-data": cmd_check_data, "train-mask-decoder": cmd_train_mask_decoder,
    "predict": cmd_predict, "eval": cmd_eval, "demo": cmd_demo, "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from ..distributed import shutdown

    try:
        status = COMMANDS[args.command](args) or 0  # a command may return a non-zero status (predict: 3, files skipped)
    except DigsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    shutdown(wait=status not in (2, 130))  # under torchrun / accelerate launch: leave the process group cleanly
    return status

