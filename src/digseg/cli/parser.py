"""The `digseg` command line's arguments; what each command does is `digseg.cli.commands.COMMANDS[args.command]`."""

from __future__ import annotations

import argparse

from ..data.check import BAD_SAMPLES
from ..data.hf_options import FIELDS as HF_FIELDS
from ..data.hf_options import HF_PREFIX
from ..data.splits import DEFAULT_VAL_FRACTION
from ..devices import DEVICE_CHOICES_TEXT, DTYPE_CHOICES
from ..errors import EXIT_SKIPPED, ConfigError
from ..evaluation.protocols import add_protocol_flags, parse_pair
from ..training.config import MASK_DECODER_STEPS, MASK_DECODER_TARGETS, MASK_DECODERS, TASKS, DataConfig

DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.7 megapixels: the largest upload `digseg demo` takes by default

_PREDICT_EPILOG = f"""\
A file that cannot be read (missing, empty, not an image, truncated) is named on stderr and skipped; the
run goes on and lists it in summary.json and index.html. EXIF orientation is applied: outputs line up with
the image as viewers show it. Each image's files appear atomically; --skip-existing continues a run.

exit status:
  0    every image was predicted
  2    a user error (bad model, flags or image selection); nothing was predicted
  {EXIT_SKIPPED}    the run finished, but some files could not be read and were skipped (0 under
       accelerate launch / torchrun, which take any other status for a crash)
  130  interrupted (Ctrl-C); run again with --skip-existing to continue
  1    anything else (a crash, with a traceback)
"""

# The help of flags that several commands share, one meaning each (a command may add a note in parentheses).
HELP = {
    "seed": "random seed (default 0): every draw is seeded by it and the sample's index or step",
    "max_steps": "optimizer steps",
    "learning_rate": "peak learning rate",
    "adapter": "a LoRA adapter folder (a LoRA run's <output>/adapter) loaded onto --model, as NAME=PATH or PATH",
    "processing_resolution": "the longer side images are resized to before the VAE",
    "bad_samples": "every sample is read once before training: error (default) refuses a dataset with unreadable "
                   "or inconsistent samples, listing them all; skip trains without them",
}


# what `predict --outputs` chooses from: per image, then the run's HTML report (summary.json is always written)
PER_IMAGE_OUTPUTS = ("labels", "overlay", "probabilities", "uncertainty", "input", "json")
OUTPUTS = (*PER_IMAGE_OUTPUTS, "report")


def parse_outputs(text: str) -> tuple[str, ...]:
    """'labels,json' -> ('labels', 'json') in OUTPUTS order; 'all' -> OUTPUTS. ConfigError names an unknown kind."""
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    if kinds == {"all"}:
        return OUTPUTS
    unknown = sorted(kinds - set(OUTPUTS))
    if unknown or not kinds:
        raise ConfigError(f"--outputs: unknown kind(s) {', '.join(unknown) or repr(text)}; choose from "
                          f"{', '.join(OUTPUTS)} or all (comma-separated)")
    return tuple(k for k in OUTPUTS if k in kinds)


def _add_device_flags(parser: argparse.ArgumentParser, training: bool = False) -> None:
    """--device and --dtype (`digseg.devices`); `training`: --dtype is optim.mixed_precision, default the config's."""
    parser.add_argument("--device", default="auto", metavar="DEVICE", help=f"where the model runs: "
                        f"{DEVICE_CHOICES_TEXT} (default auto: this process's GPU under accelerate launch / torchrun, "
                        "else CUDA, else MPS, else CPU)")
    auto = "auto: bf16 on CUDA GPUs that have it, fp16 on older ones (and on MPS, inference), fp32 on CPU"
    if training:
        parser.add_argument("--dtype", choices=DTYPE_CHOICES, help=f"the model's precision (default: "
                            f"optim.mixed_precision of the config, else {auto}); training computes in it (autocast) "
                            "and keeps fp32 weights")
    else:
        parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                            help=f"the model's precision (default {auto}); the model is loaded in it")


def _add_inference_flags(parser: argparse.ArgumentParser, resolution_default: str, protocol_note: str) -> None:
    """The E-Step, the queries, the mask decoder, the device and the test protocol: predict's and eval's."""
    parser.add_argument("--ensemble-size", type=int, default=1,
                        help="E-Step ensemble members, each from its own noise (default 1)")
    parser.add_argument("--steps", type=int, help="E-Step denoising (DDIM) steps (default: the model's)")
    parser.add_argument("--processing-resolution", type=int,
                        help=HELP["processing_resolution"] + f" (default: {resolution_default})")
    parser.add_argument("--templates", help="prompt templates of per-class and binary queries: single | photo | "
                                            "ensemble, or one with {}, e.g. 'a photo of a {}.' (default: the model's)")
    parser.add_argument("--top-k", type=int, help="open vocabulary: rank all classes in one pass, then run exact "
                                                  "queries for the k most relevant only")
    parser.add_argument("--seed", type=int, default=0, help=HELP["seed"])
    parser.add_argument("--mask-decoder", choices=MASK_DECODERS, default="auto", help="decode masks with the "
                        "model's light mask decoder or the VAE (auto: a one-step model's training decoder, else the "
                        "light one if any)")
    _add_device_flags(parser)
    add_protocol_flags(parser, protocol_note)


def _add_data_flags(parser, dataset: str, data_root: str, val_fraction: str, split_file: str, hf: bool = True,
                    required: bool = False) -> None:
    """--dataset, --data-root, --val-fraction, --split-file (and --hf); each help ends with the command's note."""
    parser.add_argument("--dataset", required=required, help=f"synthetic, folder, a registered dataset such as "
                        f"ade20k-150 (an unknown name's error lists them), or {HF_PREFIX}NAME_OR_PATH: a "
                        f"datasets-library dataset (docs/data.md){dataset}")
    parser.add_argument("--data-root", help="the dataset's root folder, in its official layout (folder: images/, "
                                            f"masks/, classes.txt){data_root}")
    parser.add_argument("--val-fraction", type=float, help="folder dataset, flat: the share of images held out for val "
                        f"by file-name hash, the rest being train (default {DEFAULT_VAL_FRACTION:g}; 1: every image "
                        f"is val){val_fraction}")
    parser.add_argument("--split-file", help=f"folder dataset: a text file of the stems of the split read, one per "
                                             f"line{split_file}")
    if hf:
        parser.add_argument("--hf", nargs="+", action="extend", metavar="KEY=VALUE", help=f"{HF_PREFIX} datasets: "
                            f"how they are read, e.g. label_column=mask reduce_zero_label=true (keys: "
                            f"{', '.join(HF_FIELDS)}; docs/data.md)")


def build_parser() -> argparse.ArgumentParser:
    """`digseg` and its commands, one block each."""
    parser = argparse.ArgumentParser(prog="digseg",
                                     description="Diffusion models as generalist, text-prompted segmenters.")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart",
                       help="train a tiny model on synthetic scenes, evaluate, save overlays (CPU, minutes)")
    q.add_argument("--output", default="digseg-quickstart", help="output folder (default: ./digseg-quickstart)")
    q.add_argument("--seed", type=int, default=0, help=HELP["seed"])
    q.add_argument("--max-steps", type=int, help=HELP["max_steps"] + " (default 2000)")
    _add_device_flags(q)

    # train's flags that the commands reading its data share: the config, the data and the seed; the backbone
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", help="YAML config (default: resuming, the run folder's config.yaml); the flags "
                                         "below and --cfg-options override it")
    config.add_argument("--cfg-options", nargs="+", action="extend", metavar="SECTION.FIELD=VALUE",
                        help="set any config field, typed and checked, e.g. optim.lr_warmup_steps=0 "
                             "data.num_workers=4 data.hf.label_column=mask (every field: docs/training.md)")
    config.add_argument("--seed", type=int, help=HELP["seed"])
    data_flags = config.add_argument_group("data (config section `data`)")
    _add_data_flags(data_flags, " (default synthetic)", "", "", " (here: the training images)", hf=False)
    data_flags.add_argument("--crop-size", type=parse_pair, metavar="H[,W]", help="training crop, H,W or N for N x N "
                            "(default: the dataset's preset, docs/augmentation.md)")
    data_flags.add_argument("--bad-samples", choices=BAD_SAMPLES, help=HELP["bad_samples"])
    backbone = argparse.ArgumentParser(add_help=False)
    backbone.add_argument("--pretrained", help="Stable Diffusion 1.x / 2.x / XL folder or hub id (or a DiGSeg model "
                                               "folder to continue)")
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--batch-size", type=int, help="samples per process and micro-step; the global batch is this x "
                                                      "processes x optim.gradient_accumulation_steps (default 4)")

    t = sub.add_parser("train", parents=[config, backbone, batch], help="train DiGSeg from a Stable Diffusion "
                       "backbone", epilog="Config files hold the sections model, data, optim and run; --cfg-options "
                       "sets any of their fields (docs/training.md lists them all).")
    t.add_argument("--output", help="run folder: config.yaml, checkpoints/, the trained model")
    t.add_argument("--max-steps", type=int, help=HELP["max_steps"] + " (default 1000)")
    t.add_argument("--learning-rate", type=float, help=HELP["learning_rate"] + " (default 3e-5)")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    t.add_argument("--eval-every", type=int, metavar="N",
                   help="score the validation split every N steps and at the last (default 0: never); the best "
                        "step's checkpoint is kept in checkpoints/best/ (docs/training.md)")
    t.add_argument("--resume", help="'latest' or a checkpoint folder; the config is checked against the checkpoint's "
                                    "(a change that alters the trajectory is refused: docs/training.md)")
    t.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue with a changed config (new learning rate, schedule, data, ...) "
                        "instead of refusing it; config.yaml records each change and the step it took effect")
    _add_device_flags(t, training=True)

    c = sub.add_parser("cache-latents", parents=[config, backbone],
                       help="encode a training set's images and masks once with the frozen VAE")
    c.add_argument("--output", required=True,
                   help="the latent cache's folder (train with --cfg-options data.latent_cache=FOLDER)")
    _add_device_flags(c)  # where the frozen VAE encodes, in which precision (latents are stored in fp32)

    b = sub.add_parser("browse-data", parents=[config, batch],
                       help="write training samples exactly as the trainer sees them (augmented)")
    b.add_argument("--output", required=True, help="folder for <k>_image.png, <k>_label.png, <k>_overlay.png")
    b.add_argument("--num", type=int, default=16, help="how many samples (default 16)")

    k = sub.add_parser("check-data", parents=[config], help="read every sample of the training and validation "
                       "splits once and list every unreadable or inconsistent one (what train does before step 1)")
    k.add_argument("--output", help="a run folder: the result is kept there, and `digseg train --output` with the "
                                    "same folder does not read unchanged files again")

    m = sub.add_parser("train-mask-decoder", help="train a light mask decoder that replaces the VAE decoder for masks")
    m.add_argument("--model", required=True, help="a trained DiGSeg model folder")
    m.add_argument("--output", required=True, help="where to write the model with its mask_decoder/ (may be --model)")
    _add_data_flags(m, " (default: the data the model records it was trained on, else synthetic)",
                    " (default: the model's, for its dataset)", " (default: the model's split rule)",
                    " (here: the training images; default: the model's, if it was trained with one)")
    m.add_argument("--processing-resolution", type=int,
                   help=HELP["processing_resolution"] + " (default: the model's, its training crop)")
    m.add_argument("--num-scenes", type=int,
                   help=f"synthetic dataset size (default: the model's, else {DataConfig.num_scenes})")
    m.add_argument("--num-samples", type=int, help="use the first N samples (default: all)")
    m.add_argument("--bad-samples", choices=BAD_SAMPLES, default="error", help=HELP["bad_samples"])
    m.add_argument("--latent-cache", help="a folder written by `digseg cache-latents` for the same VAE and size")
    m.add_argument("--task", choices=TASKS, default="both", help="the masks rendered: binary (a prompt -> its mask), "
                                                                 "palette (all classes at once) or both (default)")
    m.add_argument("--widths", help="channel widths, one per resolution, e.g. 64,32,16 (default 128,64,32[,16])")
    m.add_argument("--max-steps", type=int, default=MASK_DECODER_STEPS,
                   help=HELP["max_steps"] + f" (default {MASK_DECODER_STEPS}; docs/mask_decoder.md)")
    m.add_argument("--batch-size", type=int, default=32, help="mask latents per step (default 32)")
    m.add_argument("--learning-rate", type=float, default=1e-3, help=HELP["learning_rate"] + " (default 1e-3)")
    m.add_argument("--latent-noise", type=float, default=0.2, help="largest std of the noise added to training latents")
    m.add_argument("--target", choices=MASK_DECODER_TARGETS, default="mask",
                   help="learn the rendered mask (default) or imitate the VAE decoder (runs the VAE each step)")
    m.add_argument("--seed", type=int, default=0, help=HELP["seed"])
    _add_device_flags(m)  # the decoder itself trains in fp32

    p = sub.add_parser("predict", help="segment images with a trained model", epilog=_PREDICT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a DiGSeg model folder (e.g. digseg-quickstart/model; with "
                                                  "--adapter: their base, also a Stable Diffusion folder or hub id)")
    p.add_argument("--adapter", action="append", metavar="NAME=PATH",
                   help=HELP["adapter"] + " (repeatable: several domains on one loaded backbone)")
    p.add_argument("--use-adapter", metavar="NAME",
                   help="the --adapter that predicts the inputs naming none (default: the only one given)")
    p.add_argument("--image", nargs="+",
                   help="image files, folders or glob patterns (quoted: 'photos/*.jpg'; '**' spans folders)")
    p.add_argument("--image-list", help="a text file with one image path per line (with or instead of --image); a "
                   "path may be followed by a tab and the --adapter that predicts it (several: <output>/<NAME>/ each)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="binary: segment what this text describes")
    group.add_argument("--classes", help="comma-separated class names (default: the model's own classes)")
    group.add_argument("--classes-file",
                       help="a text file with one class name per line ('wall, walls': synonyms; '#' comments)")
    p.add_argument("--no-class-threshold", type=float, help="label 255 where no class scores above this")
    p.add_argument("--output", required=True,
                   help="output folder: per-image maps and JSON, summary.json, index.html (see docs/predict.md)")
    p.add_argument("--outputs", default="all", metavar="KINDS",
                   help=f"comma-separated files to write: {', '.join(OUTPUTS)}, or all (default); summary.json is "
                        "always written (docs/predict.md). For many images: --outputs labels")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images of the same processed size per pipeline call (same labels as 1; more memory)")
    p.add_argument("--skip-existing", action="store_true",
                   help="continue an interrupted run: keep images whose outputs are complete in --output")
    _add_inference_flags(p, "the model's, its training crop", "default: whole image at the processing resolution; "
                         "slide without --scale: a keep-ratio scale whose short side is the crop")

    e = sub.add_parser("eval", help="score label PNGs, or run a model over a dataset split and score it")
    own = "default: the --model's split rule on its own data"
    _add_data_flags(e, "", "", f" ({own})", f" (here: the images scored; {own})", required=True)
    e.add_argument("--split", default="val", help="the split to score (default val)")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--predictions", help="folder of <stem>.png label maps to score")
    src.add_argument("--model", help="a DiGSeg model folder: predict the split, then score")
    e.add_argument("--adapter", metavar="PATH", help=HELP["adapter"] + " (one; the split flags say its data)")
    e.add_argument("--output", default="digseg-eval", help="folder for metrics.json and, with --model, the label "
                                                           "PNGs in predictions/ (default digseg-eval)")
    e.add_argument("--present-only", action="store_true",
                   help="mean over classes present in the ground truth (CAT-Seg)")
    e.add_argument("--threshold-search", action="store_true",
                   help="binary datasets: pick the threshold on --search-split")
    e.add_argument("--search-split", default="val", help="--threshold-search: the split it searches on (default val)")
    e.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    _add_inference_flags(e, "the dataset protocol's test scale, else the model's",
                         "default: the dataset's preset, mmseg's or CAT-Seg's")

    d = sub.add_parser("demo", help="a local web app (Gradio) to try a model in the browser")
    d.add_argument("--model", help="a DiGSeg model folder or a `digseg export` folder (default: "
                                   "digseg-quickstart/model; with --adapter: their base, also a Stable Diffusion one)")
    d.add_argument("--adapter", action="append", metavar="NAME=PATH", help=HELP["adapter"] + " (repeatable: the page "
                   "chooses among them, or 'base' for none; the first is chosen when the page opens)")
    d.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    d.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    d.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest upload, in pixels (default 4096x4096)")
    _add_device_flags(d)

    x = sub.add_parser("export",
                       help="write a model as ONNX graphs and a manifest, to run on onnxruntime (docs/export.md)")
    x.add_argument("--model", required=True, help="a DiGSeg model folder to export, or an exported folder to "
                                                  "--quantize or strip of its text encoder")
    x.add_argument("--output", required=True, help="the new folder: *.onnx graphs and manifest.json")
    x.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES,
                   help="the model's precision (default fp32, as auto; fp16 on a CUDA GPU only; bf16 is refused)")
    x.add_argument("--quantize", choices=("int8",),
                   help="int8: onnxruntime dynamic quantization of matrix multiplies (convolutions stay fp32)")
    x.add_argument("--no-text-encoder", action="store_true",
                   help="leave the text encoder out: the model's own class prompts are precomputed (its classes only)")
    return parser
