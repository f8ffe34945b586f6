"""Peak memory per process of SD2-sized training steps on 2 CPU processes, with and without sharding.

Each cell is one `torchrun --nproc_per_node 2 -m digseg.cli train` (gloo) on a random backbone
(`common.save_sd2_sized_backbone`: SD's VAE, a 2-layer 1024-wide text encoder, and SD2's U-Net at `--unet-width`
of its channels), synthetic scenes at `--size` px without augmentation, bf16 autocast, batch 1 per process,
`--steps` steps (AdamW's moments and the EMA exist from the first step on), no previews or trackers. Both processes
kill themselves after the last step (`DIGSEG_KILL_AT=step-N`), before any checkpoint or model is written.
Peak = each worker's VmHWM (its peak resident set: weights, gradients, optimizer state, EMA, activations, the
frozen VAE and text encoder, and the communication buffers), read from /proc until it dies; the launcher's
`wait4` ru_maxrss (the largest of its descendants) is printed beside it as a check.

Modes (rows): none (DDP: every process holds everything, plus DDP's gradient buckets) and fsdp (`--sharding fsdp`:
each holds half of the trainable weights, gradients, moments and EMA). On a CPU the accelerator's memory and host
memory are one, so the figures include what a GPU run keeps in host memory (the loaded weights before they move).

    python benchmarks/bench_sharding_memory.py --unet-width 0.5 --size 512          # about 6 min on 2 cores
    python benchmarks/bench_sharding_memory.py --unet-width 1 --size 512 --modes fsdp
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
import threading
import time
from pathlib import Path

import psutil
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import load_average, machine_summary, save_sd2_sized_backbone  # noqa: E402

MODES = {"none": [], "fsdp": ["--sharding", "fsdp"]}  # row -> `digseg train` flags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_kib(pid: int) -> int | None:
    """VmHWM of a live process, KiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _watch(launcher: int, peaks: dict[int, int], done: threading.Event) -> None:
    """Record the VmHWM of every `digseg.cli` process under `launcher` until `done`."""
    while not done.is_set():
        try:
            workers = [p for p in psutil.Process(launcher).children(recursive=True) if "digseg.cli" in p.cmdline()]
        except psutil.Error:
            workers = []
        for worker in workers:
            peak = _peak_kib(worker.pid)
            if peak is not None:
                peaks[worker.pid] = max(peaks.get(worker.pid, 0), peak)
        time.sleep(0.2)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def run_cell(backbone: Path, work: Path, size: int, steps: int, flags: list[str]) -> tuple[list[float], float, float]:
    """One 2-process run -> (each worker's peak GiB, the launcher's ru_maxrss GiB, wall seconds)."""
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    config = work / "no_previews.yaml"
    config.write_text("run: {sample_every: 0, log_with: none}\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "digseg.cli", "train", "--config", str(config),
               "--pretrained", str(backbone), "--dataset", "synthetic", "--num-scenes", "8", "--crop-size", str(size),
               "--no-augmentation", "--batch-size", "1", "--max-steps", str(steps), "--dtype", "bf16",
               "--checkpoint-every", "1000000", "--output", str(out), *flags]
    env = dict(os.environ, DIGSEG_KILL_AT=f"step-{steps}", PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    peaks: dict[int, int] = {}
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(proc.pid, peaks, done), daemon=True)
    watcher.start()
    err = proc.stderr.read()  # until the launcher exits (its workers killed themselves)
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    watcher.join()
    if "SIGKILL" not in err or len(peaks) != 2:  # both workers must have reached their kill point
        raise SystemExit(f"{' '.join(command)} ended (status {status}) before step {steps}:\n{err[-3000:]}")
    return [kib / 2**20 for kib in peaks.values()], usage.ru_maxrss / 2**20, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--unet-width", type=float, default=1.0, help="SD2 U-Net channel scale (0.5: 223 M params)")
    parser.add_argument("--modes", default=",".join(MODES), help="rows, comma-separated: none, fsdp")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="--use-ema (default on)")
    args = parser.parse_args()
    modes = [m for m in MODES if m in args.modes.split(",")] or list(MODES)
    ema = ["--use-ema"] if args.ema else ["--no-use-ema"]
    print(f"{machine_summary()}; load {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backbone = save_sd2_sized_backbone(work / "backbone", unet_width=args.unet_width)
        channels = json.loads((backbone / "unet" / "config.json").read_text())["block_out_channels"]
        with safe_open(str(backbone / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
            count = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
        print(f"2 processes (gloo), SD2-architecture U-Net with channels {channels} ({count / 1e6:.0f} M parameters), "
              f"{args.size} px, bf16 autocast, batch 1 per process, {args.steps} steps, "
              f"EMA {'on' if args.ema else 'off'}; peak RSS per process")
        print("| sharding | the 2 processes (GiB) | launcher's max (GiB) | wall (s) |")
        print("|---|---:|---:|---:|")
        for mode in modes:
            peaks, launcher_max, wall = run_cell(backbone, work, args.size, args.steps, [*MODES[mode], *ema])
            print(f"| {mode} | {' / '.join(f'{p:.2f}' for p in peaks)} | {launcher_max:.2f} | {wall:.0f} |", flush=True)
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
