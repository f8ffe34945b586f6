"""Peak memory of SD2-sized training steps by memory lever, in one process or several (DDP or sharded).

Each cell is one `digseg train` run on a random backbone (`--model`: `sd2` is `common.save_sd2_sized_backbone`,
SD2's 865 M-parameter U-Net and SD's VAE; `sd2-half` the same blocks at half the channels, 223 M parameters;
`tiny` a seconds-long check of the script), synthetic scenes at `--size` px without augmentation, bf16 autocast,
`--steps` steps (AdamW's moments and the EMA copy exist from the first step on), no previews or trackers. With
`--processes N` (N > 1) the run is `torchrun --nproc_per_node N` (gloo on a CPU), batch per process, one thread
per process. Every process kills itself after the last step (`DIGSEG_KILL_AT=step-N`), before any checkpoint or
model is written, so saving does not count.

Peak, by device (`--device`, default cuda when there is one):
- cpu: the run's ru_maxrss from `os.wait4` (`common.wait_for_child`): every page the process (with several, the
  largest of them) ever had resident: weights, gradients, optimizer state, EMA, activations, the frozen VAE and
  text encoder, communication buffers, the Python runtime.
- cuda: the peak GPU memory the run logs in log.jsonl at its last step (`devices.peak_memory_mib`, process 0):
  tensors allocated, and in brackets the caching allocator's reserved pool (what the card must hold).
A cell whose process is killed before its last step (the kernel's out-of-memory killer) or that stops with
CUDA's out-of-memory error reads "out of memory".

Levers (rows): none (EMA kept beside the weights), gradient checkpointing, 8-bit AdamW (torchao, `lowmem`
extra), EMA on the CPU, no EMA, all (checkpointing + 8-bit + EMA on the CPU); and, named in `--levers` only,
fsdp and "fsdp no EMA" (`--sharding fsdp`: each of N processes holds 1/N of the trainable weights, gradients,
moments and EMA). The LoRA rows (`optim.finetune=lora`, rank 16 on the attention projections, conv_in and the
text pathway in full) repeat none, checkpointing and all with LoRA fine-tuning. On a CPU the accelerator's memory and host memory are one: "EMA on the CPU" cannot save
anything there, and its row shows that; on a GPU it moves the EMA copy (4 bytes per trainable parameter) off the card.

    python benchmarks/bench_train_memory.py --batches 1,2,4 --size 512     # about 40 min on 2 CPU cores
    python benchmarks/bench_train_memory.py --processes 2 --model sd2-half --levers none,fsdp   # DDP against FSDP
    python benchmarks/bench_train_memory.py --model tiny --size 64 --levers none              # seconds: a check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import gib, load_average, machine_summary, random_backbone, wait_for_child  # noqa: E402

LEVERS = {  # row name -> `digseg train --cfg-options` items (EMA on unless said otherwise)
    "none": ["optim.use_ema=true"],
    "gradient checkpointing": ["optim.use_ema=true", "optim.gradient_checkpointing=true"],
    "8-bit AdamW": ["optim.use_ema=true", "optim.optimizer=adamw8bit"],
    "EMA on the CPU": ["optim.use_ema=true", "optim.ema_device=cpu"],
    "no EMA": ["optim.use_ema=false"],
    "all (own_data_1gpu.yaml's levers + 8-bit AdamW)": ["optim.use_ema=true", "optim.ema_device=cpu",
                                                        "optim.gradient_checkpointing=true", "optim.optimizer=adamw8bit"],
}
_LORA = ["optim.finetune=lora", "optim.lora_rank=16"]  # attention projections; conv_in and the text pathway in full
LORA = {  # the same levers with LoRA fine-tuning (`lora` extra): in the default rows too
    "LoRA rank 16": ["optim.use_ema=true", *_LORA],
    "LoRA rank 16 + gradient checkpointing": ["optim.use_ema=true", "optim.gradient_checkpointing=true", *_LORA],
    "LoRA rank 16 + all (checkpointing + 8-bit AdamW + EMA on the CPU)": [
        "optim.use_ema=true", "optim.ema_device=cpu", "optim.gradient_checkpointing=true", "optim.optimizer=adamw8bit",
        *_LORA],
}
SHARDED = {"fsdp": ["optim.use_ema=true", "run.sharding=fsdp"], "fsdp no EMA": ["optim.use_ema=false", "run.sharding=fsdp"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cell(backbone: Path, work: Path, device: str, size: int, batch: int, steps: int, processes: int,
             flags: list[str]) -> dict | None:
    """One training run -> {"gib": peak, "reserved_gib": (cuda only), "seconds": wall}; None when it ran out of
    memory."""
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    config = work / "no_previews.yaml"  # TensorBoard previews run the pipeline at the last step: not a training cost
    config.write_text("run: {sample_every: 0, log_with: none}\n")
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                     "--master_port", str(_free_port())]
    command = [*launcher, "-m", "digseg.cli", "train", "--config", str(config), "--pretrained", str(backbone),
               "--dataset", "synthetic", "--crop-size", str(size), "--batch-size", str(batch), "--max-steps", str(steps),
               "--dtype", "bf16", "--checkpoint-every", "1000000", "--output", str(out),
               "--cfg-options", f"data.num_scenes={max(8, batch * processes)}", "data.augmentation=false", *flags]
    env = dict(os.environ, DIGSEG_KILL_AT=f"step-{steps}", PYTHONPATH=str(ROOT / "src"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    err = proc.stderr.read()
    peak = wait_for_child(proc)
    seconds = time.perf_counter() - start
    log = out / "log.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    last = next((line for line in lines if line.get("step") == steps), None)
    if last is None:  # it never reached its kill point
        if "out of memory" in err.lower() or proc.returncode == -9 or (processes > 1 and "SIGKILL" in err):
            return None
        raise SystemExit(f"{' '.join(command)} ended with {proc.returncode} before step {steps}:\n{err[-2000:]}")
    if device == "cpu":
        return {"gib": gib(peak), "seconds": seconds}
    return {"gib": last["memory_mib"] / 1024, "reserved_gib": last["memory_reserved_mib"] / 1024, "seconds": seconds}


def format_cell(cell: dict | None) -> str:
    if cell is None:
        return "out of memory"
    reserved = f" [{cell['reserved_gib']:.2f}]" if "reserved_gib" in cell else ""
    return f"{cell['gib']:.2f}{reserved} ({cell['seconds']:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when there is one")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="1", help="batch sizes per process, comma-separated (e.g. 1,2,4)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="training processes (torchrun) per cell")
    parser.add_argument("--levers", default=",".join([*LEVERS, *LORA]), help="rows, comma-separated (names above)")
    parser.add_argument("--model", choices=["sd2", "sd2-half", "tiny"], default="sd2",
                        help="sd2: the SD2-sized backbone; sd2-half: its blocks at half the channels; tiny: a check")
    parser.add_argument("--backbone-dir", type=Path, default=None,
                        help="keep the random backbone here (built once, reused by later runs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here, after every row")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device == "cuda" else machine_summary()
    kind = "peak GPU memory allocated [reserved]" if device == "cuda" else "peak RSS"
    if args.processes > 1:
        kind += " of the largest process"
    rows = {**LEVERS, **LORA, **SHARDED}
    batches = [int(b) for b in args.batches.split(",")]
    levers = [name for name in rows if name in args.levers.split(",")] or [*LEVERS, *LORA]
    header = (f"{where}; load {load_average()}; {args.model} random backbone, {args.size} px, bf16 autocast, "
              f"{args.steps} steps, {args.processes} process(es); {kind} in GiB (wall s)")
    lines = ["| lever | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---:|" * len(batches)]
    print(header, *lines, sep="\n", flush=True)
    cells: dict[str, dict[int, dict | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backbone = random_backbone(args.backbone_dir or work / args.model, args.model)
        for name in levers:
            cells[name] = {b: run_cell(backbone, work, device, args.size, b, args.steps, args.processes, rows[name])
                           for b in batches}
            lines.append(f"| {name} | " + " | ".join(format_cell(cells[name][b]) for b in batches) + " |")
            print(lines[-1], flush=True)
            if args.json:
                args.json.write_text(json.dumps({"device": where, "kind": kind, "size": args.size, "steps": args.steps,
                                                 "processes": args.processes, "table": "\n".join([header, "", *lines]),
                                                 "cells": cells}, indent=1))
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
