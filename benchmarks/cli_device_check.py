"""Do `digseg predict` and `digseg eval` run on the device and in the dtype the user's hardware calls for?

Builds a tiny random DiGSeg model and an 8-image synthetic folder dataset (64 px), then runs the two commands
as a user would, as subprocesses (``python -m digseg.cli``), with ``--device`` and ``--dtype`` (default ``auto``
both) and one denoising step:

    python -m digseg.cli predict --model M --image D/images --output P --device auto --dtype auto --steps 1 \
        --no-progress
    python -m digseg.cli eval --model M --dataset folder --data-root D --val-fraction 1 --output E \
        --device auto --dtype auto --steps 1

The folder is flat (images/, masks/), so eval's val split is its share held out by file-name hash (default 10%),
which for 8 images can be none: ``--val-fraction 1`` scores every image, on any machine.

Each command writes a ``"runtime"`` record (``P/summary.json``, ``E/metrics.json``): the device it ran on
("cuda:0", "cpu", "mps"), its name, the dtype ("fp32", "bf16", "fp16"), the torch / diffusers / digseg
versions, the number of processes and the peak CUDA memory (``memory_mib``: ``torch.cuda.max_memory_allocated`` in MiB; null off CUDA;
``digseg.devices.runtime_info``). The check fails (exit 1, one line per problem) unless both commands exit 0 and
both records show ``--expect-device`` and ``--expect-dtype``; on CUDA, also unless each peak is at least the
model's parameter bytes in that dtype (U-Net, VAE, text encoder and text pathway), i.e. unless the weights were
really on the GPU. Off CUDA the peak must be null.

Usage::

    python benchmarks/cli_device_check.py --expect-device cuda --expect-dtype bf16   # a CUDA machine, auto flags
    python benchmarks/cli_device_check.py --expect-device cpu --expect-dtype fp32    # a CPU-only machine
    python benchmarks/cli_device_check.py --expect-device cpu --expect-dtype bf16 --device cpu --dtype bf16

Prints a markdown table (command, device, dtype, peak memory, wall s); ``--json`` also writes it ("table") with
every figure and problem; ``--work DIR`` keeps the model, data and outputs there (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch

import digseg
from digseg import DiGSegPipeline
from digseg.data.synthetic import SYNTHETIC_CLASSES, SyntheticScenes, save_scenes_as_folder
from digseg.devices import DTYPE_TORCH_NAMES, resolve_dtype
from digseg.models.tiny import save_tiny_backbone

from common import gib

RUNTIME_KEYS = ("device", "device_name", "dtype", "torch", "diffusers", "digseg", "memory_mib")
WEIGHT_MODULES = ("unet", "vae", "text_encoder", "text_pathway")


def build_inputs(work: Path) -> tuple[Path, Path, DiGSegPipeline]:
    """The tiny random model (saved to `work/model`) and the synthetic folder dataset (`work/data`)."""
    backbone = save_tiny_backbone(work / "backbone", seed=0)
    pipe = DiGSegPipeline.from_backbone(backbone, class_names=list(SYNTHETIC_CLASSES))
    pipe.save_pretrained(work / "model")
    data = save_scenes_as_folder(SyntheticScenes(8, size=64, seed=1), work / "data")
    return work / "model", data, pipe


def parameter_bytes(pipe: DiGSegPipeline, dtype: torch.dtype) -> int:
    """Bytes of the model's weights (U-Net, VAE, text encoder, text pathway) when loaded in `dtype`."""
    numel = sum(p.numel() for name in WEIGHT_MODULES if getattr(pipe, name, None) is not None
                for p in getattr(pipe, name).parameters())
    return numel * torch.empty((), dtype=dtype).element_size()


def run_command(name: str, argv: list[str], record: Path, timeout: float) -> dict:
    """Run `python -m digseg.cli *argv` with this process's digseg first on the path; its exit status, wall
    seconds, the output tail and the "runtime" record of the JSON file `record` (None if absent)."""
    env = dict(os.environ)
    src = str(Path(digseg.__file__).resolve().parents[1])  # the children run the digseg this script imported
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "digseg.cli", *argv]
    print(f"$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        parts = (exc.stdout, exc.stderr)  # bytes on POSIX, even with text=True
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in parts)
        returncode, output = None, f"{output}\ntimed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    runtime = None
    if record.is_file():
        runtime = json.loads(record.read_text(encoding="utf-8")).get("runtime")
    return {"command": name, "argv": argv, "returncode": returncode, "wall_s": round(seconds, 2),
            "runtime": runtime, "output_tail": output[-3000:]}


def problems_of(result: dict, expect_device: str, expect_dtype: str, min_peak: int) -> list[str]:
    """One line per way `result` (from `run_command`) breaks the check; empty when it passes."""
    name, runtime = result["command"], result["runtime"]
    if result["returncode"] != 0:
        last = result["output_tail"].strip().splitlines()[-1:] or ["no output"]
        status = "did not finish" if result["returncode"] is None else f"exited {result['returncode']}"
        return [f"{name}: {status}: {last[0]}"]
    if not isinstance(runtime, dict):
        return [f"{name}: its JSON output has no \"runtime\" record"]
    problems = [f"{name}: runtime lacks {key!r}" for key in RUNTIME_KEYS if key not in runtime]
    device, dtype, peak = runtime.get("device"), runtime.get("dtype"), runtime.get("memory_mib")
    if str(device).split(":")[0] != expect_device:
        problems.append(f"{name}: ran on {device!r}, expected {expect_device}")
    if dtype != expect_dtype:
        problems.append(f"{name}: ran in {dtype!r}, expected {expect_dtype}")
    for key, version in (("torch", torch.__version__), ("diffusers", diffusers.__version__),
                         ("digseg", digseg.__version__)):
        if key in runtime and runtime[key] != version:
            problems.append(f"{name}: runtime says {key} {runtime[key]!r}, this interpreter has {version!r}")
    if str(device).startswith("cuda"):
        if not isinstance(peak, int) or peak < min_peak // 2**20:
            problems.append(f"{name}: peak CUDA memory {peak!r} MiB is below the model's {min_peak} parameter "
                            f"bytes in {expect_dtype}: the weights were not all on the GPU")
    elif peak is not None:
        problems.append(f"{name}: memory_mib is {peak!r} on {device!r}; it is null off CUDA")
    return problems


def format_table(results: list[dict]) -> str:
    """The markdown table: command, device, dtype, peak memory (GiB; n/a off CUDA), wall seconds."""
    lines = ["| command | device | dtype | peak memory GiB | wall s |", "|---|---|---|---:|---:|"]
    for r in results:
        rt = r["runtime"] if isinstance(r["runtime"], dict) else {}
        peak = rt.get("memory_mib")
        device = rt.get("device", "?")
        if rt.get("device_name"):
            device = f"{device} ({rt['device_name']})"
        lines.append(f"| {r['command']} | {device} | {rt.get('dtype', '?')} | "
                     f"{f'{peak / 1024:.3f}' if isinstance(peak, int) else 'n/a'} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expect-device", required=True, choices=("cuda", "cpu", "mps"),
                        help="the device type both commands must record")
    parser.add_argument("--expect-dtype", required=True, choices=tuple(DTYPE_TORCH_NAMES), help="the dtype both must record")
    parser.add_argument("--device", default="auto", help="passed to both commands (default auto)")
    parser.add_argument("--dtype", default="auto", help="passed to both commands (default auto)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per command (default 300)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table and figures to this JSON file")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep model, data and outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="digseg-cli-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, data, pipe = build_inputs(work)
        min_peak = parameter_bytes(pipe, resolve_dtype(args.expect_dtype))
        del pipe
        flags = ["--device", args.device, "--dtype", args.dtype, "--steps", "1"]
        results = [
            run_command("predict", ["predict", "--model", str(model), "--image", str(data / "images"),
                                    "--output", str(work / "predict"), *flags, "--no-progress"],
                        work / "predict" / "summary.json", args.timeout),
            run_command("eval", ["eval", "--model", str(model), "--dataset", "folder", "--data-root", str(data),
                                 "--val-fraction", "1", "--output", str(work / "eval"), *flags],
                        work / "eval" / "metrics.json", args.timeout),
        ]

    problems = [p for r in results for p in problems_of(r, args.expect_device, args.expect_dtype, min_peak)]
    table = format_table(results)
    print(f"\n# digseg predict / eval with --device {args.device} --dtype {args.dtype} "
          f"(expected {args.expect_device}, {args.expect_dtype}; model weights {gib(min_peak):.3f} GiB)\n")
    print(table)
    for r in results:
        if r["returncode"] != 0:
            print(f"\n--- {r['command']} output (tail)\n{r['output_tail']}")
    print()
    for p in problems:
        print(f"PROBLEM {p}")
    verdict = "ok" if not problems else f"{len(problems)} problem(s)"
    print(f"cli device check: {verdict}")
    if args.json:
        devices = sorted({str(r["runtime"].get("device")) for r in results if isinstance(r["runtime"], dict)})
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        summary = (f"cli predict+eval ok on {'/'.join(devices)} {args.expect_dtype}" if not problems
                   else f"cli FAILED: {problems[0]}{more}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "expect_device": args.expect_device, "expect_dtype": args.expect_dtype, "device_flag": args.device,
            "dtype_flag": args.dtype, "parameter_bytes": min_peak, "ok": not problems, "problems": problems,
            "summary": summary, "table": table,
            "commands": [{k: v for k, v in r.items() if k != "output_tail"} for r in results],
        }, indent=1))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
