"""Where a command runs and in which precision: one rule for every command, the demo and Python users.

Device `auto`: under a launcher (`accelerate launch`, `torchrun`) the process's own GPU (cuda:LOCAL_RANK), else
CUDA, else Apple's MPS, else the CPU. Dtype `auto`: bf16 on CUDA devices that support it (else fp16), fp16 on MPS,
fp32 on the CPU. A request the machine cannot meet is a one-line `ConfigError`, raised before any model is loaded."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from functools import lru_cache
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported when a device is resolved, not with this module: `digseg --help` stays fast
DTYPE_TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype spelling -> torch's
DTYPE_CHOICES = ("auto", *DTYPE_TORCH_NAMES)
DEVICE_CHOICES_TEXT = "auto, cpu, cuda, cuda:N or mps"  # --device takes any of these (cuda:N is open-ended)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps` -> the torch.device to run on (see the module docstring)."""
    import torch

    device = str(device)
    match = _DEVICE.match(device.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ConfigError(f"unknown device {device!r}: choose {DEVICE_CHOICES_TEXT}")
    kind, index = match.groups()
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: Apple's MPS is not available on this machine")
    if kind in ("cpu", "mps"):
        return torch.device(kind)
    if not torch.cuda.is_available():
        reason = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no GPU"
        raise ConfigError(f"device {device!r}: no CUDA device is available ({reason}); use --device cpu or auto")
    count = torch.cuda.device_count()
    # a launched process (WORLD_SIZE > 1) takes its own GPU, LOCAL_RANK read from the environment: accelerate's
    # PartialState would also start the process group, which choosing a device must not do
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    n = int(index) if index is not None else int(os.environ.get("LOCAL_RANK", "0")) if launched else 0
    if n >= count:
        raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", n)


def _bf16_supported(device: "torch.device") -> bool:
    import torch

    if device.type == "cuda":
        if torch.version.hip:  # ROCm: torch knows which AMD GPUs have it
            return torch.cuda.is_bf16_supported()
        return torch.cuda.get_device_capability(device)[0] >= 8  # NVIDIA: Ampere (sm_80) and newer
    return True  # the CPU runs bf16 kernels; MPS does on the macOS versions torch supports it on


def resolve_dtype(dtype: "str | torch.dtype" = "auto", device: "torch.device | str" = "cpu") -> "torch.dtype":
    """`auto`, `fp32`, `bf16` or `fp16` (or a torch.dtype) for `device` -> the torch.dtype to load and run in."""
    import torch

    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        dtype = dtype_name(dtype)  # "bf16"; one --dtype lacks ("float64") is refused below
    dtype = str(dtype).strip().lower()
    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"unknown dtype {dtype!r}: choose {', '.join(DTYPE_CHOICES)}")
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if _bf16_supported(device) else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype == "bf16" and not _bf16_supported(device):
        raise ConfigError(f"dtype bf16: {device_name(device)} does not support bfloat16; use --dtype fp16 or fp32")
    return getattr(torch, DTYPE_TORCH_NAMES[dtype])


def resolve_device_and_dtype(device: "str | torch.device" = "auto",
                             dtype: "str | torch.dtype" = "auto") -> "tuple[torch.device, torch.dtype]":
    """Both choices at once, checked before any work: -> (torch.device, torch.dtype)."""
    resolved = resolve_device(device)
    return resolved, resolve_dtype(dtype, resolved)


def best_mixed_precision() -> str:
    """Training's precision by the same rule as `--dtype auto`, in accelerate's words: "bf16" on CUDA GPUs that
    have it, "fp16" on older ones, "no" (fp32) on a CPU (and under ACCELERATE_USE_CPU)."""
    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available():
        return "no"
    return dtype_name(resolve_dtype("auto", torch.device("cuda")))


def dtype_name(dtype: "torch.dtype") -> str:
    """torch.bfloat16 -> "bf16" (the --dtype spelling); other dtypes as torch names them."""
    name = str(dtype).removeprefix("torch.")
    return {torch_name: spelling for spelling, torch_name in DTYPE_TORCH_NAMES.items()}.get(name, name)


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "CPU"


def device_name(device: "torch.device | str") -> str:
    """A person's name for the device: the GPU's model, or the CPU's model and core count."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"{_cpu_name()} ({os.cpu_count()} cores)"


def peak_memory_mib(device: "torch.device | str") -> dict[str, int]:
    """This process's peak CUDA memory in MiB, as mmsegmentation logs it (max allocated, max reserved); else {}."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {}
    return {"memory_mib": torch.cuda.max_memory_allocated(device) // 2**20,
            "memory_reserved_mib": torch.cuda.max_memory_reserved(device) // 2**20}


def runtime_info(device: "torch.device | str", dtype: "torch.dtype", num_processes: int = 1) -> dict:
    """What an output records about where it ran (JSON values); the peak memory is `peak_memory_mib`'s."""
    import diffusers
    import torch

    from . import __version__

    device = torch.device(device)
    return {"device": str(device), "device_name": device_name(device), "dtype": dtype_name(dtype),
            "num_processes": num_processes, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "digseg": __version__, "memory_mib": None, "memory_reserved_mib": None, **peak_memory_mib(device)}
