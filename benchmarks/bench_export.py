"""The exported model (`digseg export`) on onnxruntime against the PyTorch pipeline: speed, memory and accuracy.

Speed (the default): images/s and peak memory, side by side in one run, of four runtimes on the same weights:

- `torch-fp32`: `DiGSegPipeline` eager in fp32 (what `digseg predict --dtype auto` runs on a CPU);
- `torch-bf16-cl`: the same loaded in bf16 with `enable_speedups(channels_last=True)` (`digseg predict --dtype
  bf16`; the VAE's input goes channels-last in any case, `encode_latents`);
- `ort-fp32`: the folder `digseg export` writes, on onnxruntime's CPU execution provider (`OnnxDiGSegPipeline`);
- `ort-int8`: the same folder through `--quantize int8` (dynamic int8 MatMul/Gemm weights, convolutions fp32).

Model: `--model sd2` (default): SD2's U-Net (widened to 8 input channels, 866 M parameters), SD's VAE and a 2-layer
1024-wide CLIP text encoder, all RANDOM weights (`common.save_sd2_sized_backbone`); `sd2-half`: SD2's blocks at
half the channels; `tiny`: `digseg.models.tiny` (what `--quick` uses). One 4-class model, palette query, one
`--size` px random image per call (batch 1), at two settings: E-Step 1x1 (noise, one DDIM step at the trailing
timestep, VAE decoder) and one-step (the same weights read as a one-step model: zeros at t = T-1, one pass, VAE
decoder; `config.objective = "one-step"`, set on the loaded model as bench_one_step.py does). Each runtime runs
in a child process of its own (load, one untimed warm-up call per setting, then `--repeats` timed calls per
setting, median); its peak memory is the child's peak RSS (`os.wait4`'s ru_maxrss: loading and both settings).
Threads: torch and onnxruntime's intra-op pool both get `--threads` (default: torch's default, the core count).
The export and the int8 quantization also run in children of their own (wall time and peak RSS reported).

Accuracy (`--accuracy DIR`, a `digseg quickstart` output: DIR/model): the trained tiny model exported fp32 and
int8, on `--num-scenes` held-out synthetic scenes (seed 1, as the quickstart's evaluation; training used seed 0):
- label agreement of ORT fp32 and ORT int8 with PyTorch, binary (one shape per scene) and palette queries, the
  starting noise being the torch generator's draws passed as `noise` (exact parity of the inputs), E-Step 1x1;
- mIoU of PyTorch, ORT fp32 and ORT int8 by the real command `digseg eval --dataset folder` on the same scenes
  written as a folder dataset (palette query, seed 0; the onnxruntime runs draw their noise from numpy, so they do
  not get PyTorch's noise there).

    python benchmarks/bench_export.py --quick                       # tiny model, 64 px: the script runs (~2 min)
    python benchmarks/bench_export.py --model sd2 --size 512        # SD2 size at 512 px, 1x1 and one-step
    python benchmarks/bench_export.py --accuracy digseg-quickstart  # int8 / fp32 / PyTorch on a trained model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import format_number, gib, load_average, machine_summary, wait_for_child

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("torch-fp32", "torch-bf16-cl", "ort-fp32", "ort-int8")
SETTINGS = ("1x1", "one-step")
CLASSES = ["background", "circle", "square", "triangle"]
PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "tensorrt": "TensorrtExecutionProvider"}


# ------------------------------------------------------------------------------------------------ children
def run_child(args: list[str], timeout: float | None = None) -> tuple[dict, float, float]:
    """`python bench_export.py --child ...` -> (the JSON it prints last, its peak RSS in bytes, wall seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines = []
    for line in proc.stdout:  # the child's own messages pass through
        lines.append(line)
        if not line.startswith("RESULT "):
            print("    " + line, end="", flush=True)
    peak = wait_for_child(proc)
    wall = time.perf_counter() - start
    results = [json.loads(line[len("RESULT "):]) for line in lines if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise SystemExit(f"child {' '.join(args)} failed with exit status {proc.returncode}")
    return results[-1], peak, wall


def child_build(model: str, size: int, out: Path) -> dict:
    """Build the random backbone `model` and save a 4-class DiGSeg model of it (processing at `size`) to `out`."""
    import torch

    from common import random_backbone
    from digseg import DiGSegPipeline

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        backbone = random_backbone(Path(tmp) / "backbone", model)
        pipe = DiGSegPipeline.from_backbone(backbone, class_names=CLASSES, processing_resolution=size)
    pipe.save_pretrained(out)
    return {"unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "vae_parameters": sum(p.numel() for p in pipe.vae.parameters()), "torch": torch.__version__}


def child_export(model: Path, out: Path) -> dict:
    from digseg import DiGSegPipeline
    from digseg.export.onnx_export import export_pipeline

    export_pipeline(DiGSegPipeline.from_pretrained(model), out)
    return {"bytes": sum(p.stat().st_size for p in out.iterdir())}


def child_quantize(source: Path, out: Path) -> dict:
    from digseg.export.onnx_export import quantize_folder

    quantize_folder(source, out)
    return {"bytes": sum(p.stat().st_size for p in out.iterdir())}


def load_runtime(runtime: str, folder: Path, threads: int, device: str = "cpu"):
    """(pipeline, set_objective(objective)) of `runtime` on `folder` (a model folder, or an exported one).
    ORT runtimes name their execution provider after "@" (ort-fp32@cuda); PyTorch ones run on `device`."""
    if runtime.startswith("ort"):
        import onnxruntime as ort

        from digseg.runtime.pipeline import OnnxDiGSegPipeline

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        provider = runtime.partition("@")[2] or "cpu"
        pipe = OnnxDiGSegPipeline.from_pretrained(folder, provider=provider, session_options=options)
        if provider != "cpu" and pipe.providers[0] == "CPUExecutionProvider":
            raise SystemExit(f"{runtime}: onnxruntime fell back to the CPU provider")

        def set_objective(objective: str) -> None:
            pipe.manifest["objective"] = objective
            pipe.manifest["one_step_decoder"] = "vae" if objective == "one-step" else None
        return pipe, set_objective
    import torch

    from digseg import DiGSegPipeline

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if runtime == "torch-bf16-cl" else torch.float32
    pipe = DiGSegPipeline.from_pretrained(folder, dtype=dtype).to(device)
    if runtime == "torch-bf16-cl":
        pipe.enable_speedups(channels_last=True)
    pipe.set_progress_bar_config(disable=True)

    def set_objective(objective: str) -> None:
        pipe.register_to_config(objective=objective, one_step_decoder="vae" if objective == "one-step" else None)
    return pipe, set_objective


def child_speed(runtime: str, folder: Path, size: int, repeats: int, threads: int, device: str = "cpu") -> dict:
    """Load `runtime`, then per setting one warm-up call and `repeats` timed ones: seconds per call."""
    from PIL import Image

    start = time.perf_counter()
    pipe, set_objective = load_runtime(runtime, folder, threads, device)
    load_s = time.perf_counter() - start
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    times: dict[str, list[float]] = {}
    for setting in SETTINGS:
        set_objective("one-step" if setting == "one-step" else "diffusion")
        seconds = []
        for i in range(repeats + 1):
            if runtime.startswith("torch"):
                import torch

                kw = {"generator": torch.Generator().manual_seed(i)}
                context = torch.no_grad()
            else:
                import contextlib

                kw, context = {"generator": i}, contextlib.nullcontext()
            t0 = time.perf_counter()
            with context:
                out = pipe(image, ensemble_size=1, num_inference_steps=1, mask_decoder="vae", show_progress_bar=False,
                           **kw)
            if device == "cuda" and runtime.startswith("torch"):
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
            assert np.asarray(out.labels[0]).shape == (size, size)
        times[setting] = seconds[1:]  # the first is the warm-up
        print(f"{runtime:18s} {setting:8s} {', '.join(f'{s:.2f}' for s in seconds[1:])} s "
              f"(warm-up {seconds[0]:.2f} s); load {load_average()}", flush=True)
    return {"load_s": load_s, "seconds": times}


# ------------------------------------------------------------------------------------------------ speed
def speed(args: argparse.Namespace, work: Path) -> dict:
    model = work / f"model-{args.model}-{args.size}"
    fp32, int8 = work / f"{model.name}-onnx", work / f"{model.name}-int8"
    result: dict = {"model": args.model, "size": args.size, "repeats": args.repeats, "threads": args.threads,
                    "machine": machine_summary(), "stages": {}}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    for stage, target, child_args in (
            ("build", model, ["build", args.model, str(args.size), str(model)]),
            ("export fp32", fp32, ["export", str(model), str(fp32)]),
            ("quantize int8", int8, ["quantize", str(fp32), str(int8)])):
        if (target / "model_index.json").is_file() or (target / "manifest.json").is_file():
            print(f"{stage}: {target} exists, reused")
            continue
        print(f"{stage} -> {target} (load {load_average()})", flush=True)
        info, peak, wall = run_child(["--child", *child_args])
        result["stages"][stage] = {**info, "peak_rss_gib": gib(peak), "wall_s": wall}
        print(f"{stage}: {wall:.0f} s, peak RSS {gib(peak):.2f} GiB", flush=True)
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    runtimes = list(RUNTIMES)
    for provider in args.providers.split(","):  # other execution providers: fp32 graphs (int8 is a CPU format)
        if provider != "cpu":
            name = PROVIDER_NAMES[provider]
            if name in available:
                runtimes.append(f"ort-fp32@{provider}")
            else:
                print(f"ort-fp32@{provider}: not run, onnxruntime here has no {name}")
                result.setdefault("not_available", []).append(provider)
    rows = []
    for runtime in runtimes:
        folder = model if runtime.startswith("torch") else int8 if runtime == "ort-int8" else fp32
        print(f"{runtime} (load {load_average()})", flush=True)
        info, peak, wall = run_child(["--child", "speed", runtime, str(folder), str(args.size),
                                      str(args.repeats), str(args.threads), args.device])
        for setting in SETTINGS:
            s = statistics.median(info["seconds"][setting])
            rows.append({"runtime": runtime, "setting": setting, "s_per_image": s, "images_per_s": 1 / s,
                         "seconds": info["seconds"][setting], "peak_rss_gib": gib(peak), "load_s": info["load_s"]})
    result["rows"] = rows
    torch_best = {s: max(r["images_per_s"] for r in rows if r["setting"] == s and r["runtime"].startswith("torch"))
                  for s in SETTINGS}
    for row in rows:
        row["vs_fastest_torch"] = row["images_per_s"] / torch_best[row["setting"]]
    lines = [f"{args.model} model (RANDOM weights), {args.size} px, palette query, batch 1, median of {args.repeats}; "
             f"PyTorch on {args.device}; {machine_summary()}, onnxruntime {result['onnxruntime']}, "
             f"{args.threads} threads",
             "| runtime | setting | s/image | images/s | x fastest PyTorch | peak RSS (GiB) |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['runtime']} | {row['setting']} | {format_number(row['s_per_image'])} | "
                     f"{format_number(row['images_per_s'])} | {row['vs_fastest_torch']:.2f} | "
                     f"{row['peak_rss_gib']:.2f} |")
    result["table"] = "\n".join(lines[1:])
    result["device"] = args.device
    print("\n" + "\n".join(lines))
    for stage, info in result["stages"].items():
        print(f"{stage}: {info['wall_s']:.0f} s, peak RSS {info['peak_rss_gib']:.2f} GiB"
              + (f", {info['bytes'] / 2**30:.2f} GiB on disk" if "bytes" in info else ""))
    one = {r["runtime"]: r for r in rows if r["setting"] == "one-step"}
    best_ort = max(r["images_per_s"] for name, r in one.items() if name.startswith("ort"))
    ratio = best_ort / torch_best["one-step"]
    result["goal"] = {"one_step_ort_over_fastest_torch": ratio, "target": 1.3, "met": ratio >= 1.3}
    result["summary"] = (f"export one-step: onnxruntime {best_ort:.2f} img/s = {ratio:.2f}x the fastest PyTorch "
                         f"setting ({torch_best['one-step']:.2f} img/s) on {args.device}")
    print(f"goal (onnxruntime one-step >= 1.3x the fastest PyTorch setting): {ratio:.2f}x -> "
          f"{'met' if ratio >= 1.3 else 'NOT met'}")
    return result


# ------------------------------------------------------------------------------------------------ accuracy
def child_agreement(model: Path, fp32: Path, int8: Path, num_scenes: int) -> dict:
    """Label agreement of the exported folders with PyTorch on held-out scenes, the same starting noise."""
    import torch

    from digseg import DiGSegPipeline
    from digseg.data.synthetic import SyntheticScenes
    from digseg.pipelines.common import padded_size
    from digseg.runtime.pipeline import OnnxDiGSegPipeline

    pipe = DiGSegPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    onnx = {"fp32": OnnxDiGSegPipeline.from_pretrained(fp32), "int8": OnnxDiGSegPipeline.from_pretrained(int8)}
    scenes = SyntheticScenes(num_scenes, seed=1)
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    shapes = scenes.class_names[1:]
    same = {(k, q): 0 for k in onnx for q in ("binary", "palette")}
    total = {"binary": 0, "palette": 0}
    for i in range(num_scenes):
        image, _ = scenes.scene(i)
        h, w = padded_size(*image.shape[:2], pipe.config.default_processing_resolution, pipe.pad_multiple)
        for query, kw in (("binary", {"prompt": shapes[i % len(shapes)]}), ("palette", {})):
            noise = torch.randn((1, 1, 4, h // f, w // f), generator=torch.Generator().manual_seed(i))[0]
            with torch.no_grad():
                expected = np.asarray(pipe(image, generator=torch.Generator().manual_seed(i), **kw).labels[0])
            total[query] += expected.size
            for kind, runner in onnx.items():
                got = runner(image, noise=[noise.numpy()], **kw).labels[0]
                same[(kind, query)] += int((got == expected).sum())
    return {f"{kind}_{query}": same[(kind, query)] / total[query] for kind, query in same}


def write_folder_dataset(folder: Path, num_scenes: int) -> None:
    """The held-out synthetic scenes (seed 1) as a folder dataset: images/, masks/, classes.txt."""
    from PIL import Image

    from digseg.data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(num_scenes, seed=1)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "classes.txt").write_text("\n".join(scenes.class_names) + "\n")
    for i in range(num_scenes):
        image, label = scenes.scene(i)
        Image.fromarray(image).save(folder / "images" / f"scene_{i:04d}.png")
        Image.fromarray(label).save(folder / "masks" / f"scene_{i:04d}.png")


def accuracy(args: argparse.Namespace, work: Path) -> dict:
    model = args.accuracy / "model"
    fp32, int8 = work / "quickstart-onnx", work / "quickstart-int8"
    result: dict = {"model": str(model), "num_scenes": args.num_scenes, "machine": machine_summary()}
    if not (fp32 / "manifest.json").is_file():
        _, peak, wall = run_child(["--child", "export", str(model), str(fp32)])
        print(f"export fp32: {wall:.0f} s, peak RSS {gib(peak):.2f} GiB")
    if not (int8 / "manifest.json").is_file():
        _, peak, wall = run_child(["--child", "quantize", str(fp32), str(int8)])
        print(f"quantize int8: {wall:.0f} s, peak RSS {gib(peak):.2f} GiB")
    agreement, _, wall = run_child(["--child", "agreement", str(model), str(fp32), str(int8), str(args.num_scenes)])
    result["agreement"] = agreement
    print(f"label agreement with PyTorch on {args.num_scenes} held-out scenes, E-Step 1x1, same noise ({wall:.0f} s):")
    for key, value in agreement.items():
        print(f"  {key}: {value:.4%}")
    data = work / "heldout"
    if not (data / "classes.txt").is_file():
        write_folder_dataset(data, args.num_scenes)
    result["eval"] = {}
    for name, folder in (("pytorch", model), ("ort-fp32", fp32), ("ort-int8", int8)):
        out = work / f"eval-{name}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "digseg.cli", "eval", "--dataset", "folder", "--data-root", str(data),
                   "--val-fraction", "1", "--model", str(folder), "--output", str(out), "--seed", "0"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((out / "metrics.json").read_text())
        result["eval"][name] = {"mIoU": metrics["mIoU"], "num_images": metrics["num_images"],
                                "wall_s": time.perf_counter() - start}
        print(f"digseg eval {name}: mIoU {metrics['mIoU']:.2f} on {metrics['num_images']} images")
    result["command"] = "digseg eval --dataset folder --data-root HELDOUT --val-fraction 1 --model M --seed 0"
    gap = result["eval"]["ort-fp32"]["mIoU"] - result["eval"]["ort-int8"]["mIoU"]
    result["goals"] = {"fp32_agreement_min": min(v for k, v in agreement.items() if k.startswith("fp32")),
                       "int8_agreement_min": min(v for k, v in agreement.items() if k.startswith("int8")),
                       "int8_mIoU_below_fp32": gap}
    print(f"goals: fp32 agreement >= 99.9%: {result['goals']['fp32_agreement_min']:.4%}; int8 >= 99%: "
          f"{result['goals']['int8_agreement_min']:.4%}; int8 mIoU within 1 point of fp32: {gap:+.2f} below")
    return result


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        role, rest = argv[1], argv[2:]
        if role == "build":
            info = child_build(rest[0], int(rest[1]), Path(rest[2]))
        elif role == "export":
            info = child_export(Path(rest[0]), Path(rest[1]))
        elif role == "quantize":
            info = child_quantize(Path(rest[0]), Path(rest[1]))
        elif role == "speed":
            info = child_speed(rest[0], Path(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]), rest[5])
        elif role == "agreement":
            info = child_agreement(Path(rest[0]), Path(rest[1]), Path(rest[2]), int(rest[3]))
        else:
            raise SystemExit(f"unknown child role {role}")
        print("RESULT " + json.dumps(info), flush=True)
        return
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sd2", choices=["sd2", "sd2-half", "tiny"],
                        help="random backbone of the speed cells (default sd2)")
    parser.add_argument("--size", type=int, default=512, help="image and processing size in px (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per cell after one warm-up (default 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch and onnxruntime intra-op threads (default: torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the PyTorch cells run")
    parser.add_argument("--providers", default="cpu",
                        help="onnxruntime execution providers, comma-separated: cpu (always: fp32 and int8), cuda, "
                             "tensorrt (fp32 graphs; one not in this onnxruntime is reported and skipped)")
    parser.add_argument("--quick", action="store_true", help="tiny model at 64 px: check that the script runs")
    parser.add_argument("--accuracy", type=Path, help="a `digseg quickstart` folder: int8/fp32/PyTorch accuracy")
    parser.add_argument("--num-scenes", type=int, default=100, help="--accuracy: held-out scenes (default 100)")
    parser.add_argument("--work", type=Path, help="keep models and exports here between runs (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.size = "tiny", 64
    started = time.perf_counter()
    print(f"{machine_summary()}; load {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = accuracy(args, work) if args.accuracy else speed(args, work)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"wall time {result['wall_s']:.0f} s; load {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
