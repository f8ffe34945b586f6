"""Peak memory of SD2-sized training steps by memory lever: the CPU proxy of the one-GPU recipe's table.

Each cell is one `digseg train` subprocess on the SD2-sized random backbone (`common.save_sd2_sized_backbone`:
SD2's 865 M-parameter U-Net, SD's VAE), synthetic scenes at `--size` px without augmentation, bf16 autocast,
`--steps` steps (AdamW's moments and the EMA copy exist from the first step on), no previews or trackers. The
process kills itself after
the last step (`DIGSEG_KILL_AT=step-N`), before any checkpoint or model is written, so saving does not count.
Peak = the child's ru_maxrss from `os.wait4` (every page it ever had resident: weights, gradients, optimizer
state, EMA, activations, and the frozen VAE and text encoder).

Levers (rows): none (EMA kept beside the weights), gradient checkpointing, 8-bit AdamW (torchao, `lowmem`
extra), EMA on the CPU, no EMA, all (checkpointing + 8-bit + EMA on the CPU). On a CPU the accelerator's memory
and host memory are one: "EMA on the CPU" cannot save anything here, and its row shows that; on a GPU it moves
the EMA copy (4 bytes per trainable parameter) off the card.

    python benchmarks/bench_train_memory.py --batches 1 --size 512     # about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import load_average, machine_summary, save_sd2_sized_backbone  # noqa: E402

LEVERS = {  # row name -> `digseg train` flags (EMA on unless said otherwise)
    "none": ["--use-ema"],
    "gradient checkpointing": ["--use-ema", "--gradient-checkpointing"],
    "8-bit AdamW": ["--use-ema", "--optimizer", "adamw8bit"],
    "EMA on the CPU": ["--use-ema", "--ema-device", "cpu"],
    "no EMA": ["--no-use-ema"],
    "all (own_data_1gpu.yaml's levers + 8-bit AdamW)": ["--use-ema", "--ema-device", "cpu", "--gradient-checkpointing",
                                                        "--optimizer", "adamw8bit"],
}


def run_cell(backbone: Path, work: Path, size: int, batch: int, steps: int, flags: list[str]) -> tuple[float, float]:
    """One training subprocess -> (peak RSS GiB, wall seconds)."""
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    config = work / "no_previews.yaml"  # TensorBoard previews run the pipeline at the last step: not a training cost
    config.write_text("run: {sample_every: 0, log_with: none}\n")
    command = [sys.executable, "-m", "digseg.cli", "train", "--config", str(config), "--pretrained", str(backbone),
               "--dataset", "synthetic",
               "--num-scenes", str(max(8, batch)), "--resolution", str(size), "--no-augmentation",
               "--batch-size", str(batch), "--max-steps", str(steps), "--mixed-precision", "bf16",
               "--checkpoint-every", "1000000", "--output", str(out), *flags]
    env = dict(os.environ, DIGSEG_KILL_AT=f"step-{steps}", PYTHONPATH=str(ROOT / "src"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    if os.WIFEXITED(status) or os.WTERMSIG(status) != 9:  # it must have reached its kill point
        raise SystemExit(f"{' '.join(command)} ended with status {status} before step {steps}:\n{err[-2000:]}")
    return usage.ru_maxrss / 2**20, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="1", help="batch sizes, comma-separated (e.g. 1,2,4)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--levers", default=",".join(LEVERS), help="rows, comma-separated (names above)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    levers = [name for name in LEVERS if name in args.levers.split(",")] or list(LEVERS)
    print(f"{machine_summary()}; load {load_average()}; SD2-sized random backbone, {args.size} px, bf16 autocast, "
          f"{args.steps} steps; peak RSS in GiB (wall s)")
    print("| lever | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backbone = save_sd2_sized_backbone(work / "sd2")
        for name in levers:
            cells = [run_cell(backbone, work, args.size, b, args.steps, LEVERS[name]) for b in batches]
            print(f"| {name} | " + " | ".join(f"{gib:.2f} ({wall:.0f} s)" for gib, wall in cells) + " |", flush=True)
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
