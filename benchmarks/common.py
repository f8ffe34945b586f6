"""Helpers shared by the scripts in benchmarks/: memory trimming and peak RSS (every memory figure in GiB), call
timing and CPU share, machine and load reports, and the Stable-Diffusion-sized random backbones. Dtype names
("fp32", "bf16", "fp16") are digseg's own: `digseg.devices.resolve_dtype`.

The scripts run as `python benchmarks/X.py`, so this folder is on `sys.path` and they import `from common import
...`. Every helper here is used by more than one benchmark; one benchmark's own helpers stay in its script.
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
import torch

from digseg.devices import device_name
from digseg.models.tiny import save_tiny_backbone, save_tiny_sdxl_backbone, tiny_scheduler, tiny_tokenizer

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


# ------------------------------------------------------------------------------------------------ memory
def gib(nbytes: float) -> float:
    """Bytes -> GiB, the one unit every benchmark reports memory in."""
    return nbytes / 2**30


def trim_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc `malloc_trim`), so the next RSS reading
    is the memory in use rather than what the allocator kept."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def wait_for_child(proc: subprocess.Popen) -> int:
    """Wait for the subprocess `proc` to end, set its `returncode` (negative: the signal that ended it) and return
    its peak RSS in bytes: `os.wait4`'s ru_maxrss, the most it (or the largest of the children it waited for) ever
    had resident. Exact, no sampling."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * 1024  # KiB on Linux


class PeakRSS:
    """Context manager: peak RSS above the RSS at entry, sampled by a background thread.

    On entry memory is trimmed (`trim_memory`) and the RSS read; a thread then samples the RSS every `interval`
    seconds until exit. `extra_bytes`: the largest sample minus the RSS at entry, i.e. the extra memory the code
    inside the block needed on top of what was already loaded (`gib(extra_bytes)` for a table).
    """

    def __init__(self, interval: float = 0.003) -> None:
        self.interval = interval
        self.proc = psutil.Process(os.getpid())
        self.extra_bytes = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        trim_memory()
        self.base = self.proc.memory_info().rss
        self._peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.proc.memory_info().rss)
        self.extra_bytes = self._peak - self.base


# ------------------------------------------------------------------------------------------------ timing
class CallCost(PeakRSS):
    """Context manager around one call: its wall time, own CPU share and peak extra RSS (`PeakRSS`).

    `seconds`: wall time from just after the RSS baseline to the end of the block (on a GPU, synchronise the
    device inside the block). `cpu_share`: this process's user + system CPU time over the block divided by
    (`seconds` x torch intra-op threads); well below 1 means other processes took the cores during the call.
    """

    def __enter__(self) -> "CallCost":
        super().__enter__()
        self._cpu0 = sum(self.proc.cpu_times()[:2])
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        cpu = sum(self.proc.cpu_times()[:2]) - self._cpu0
        super().__exit__(*exc)
        self.cpu_share = cpu / (self.seconds * torch.get_num_threads())


# ------------------------------------------------------------------------------------------------ reports
def load_average(separator: str = ", ") -> str:
    """The 1, 5 and 15 minute load averages of the machine, two decimals each, joined by `separator`."""
    return separator.join(f"{x:.2f}" for x in os.getloadavg())


def machine_summary() -> str:
    """One line on what a figure was measured with: the CPU's model and cores, RAM, torch version and threads."""
    return (f"{device_name('cpu')}, {gib(psutil.virtual_memory().total):.0f} GiB RAM, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def format_number(x: float | None, digits: int = 3) -> str:
    """A figure for a table: no decimals from 100 up, one from 10, else `digits` significant digits; "n/a" for None."""
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


# ------------------------------------------------------------------------------------------------ models
def sd2_unet(in_channels: int = 4, width: float = 1.0):
    """Stable Diffusion 2's U-Net architecture (865 M parameters with 4 input channels), random weights. `width`
    scales every block's channels (0.5: the same blocks and heads at half the channels, 223 M parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=96, in_channels=in_channels, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=tuple(int(c * width) for c in (320, 640, 1280, 1280)), layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
    ).eval()


def sd_vae():
    """Stable Diffusion's VAE architecture (84 M parameters), random weights."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
        scaling_factor=0.18215,
    ).eval()


def save_sd2_sized_backbone(path: Path, seed: int = 0, unet_width: float = 1.0) -> Path:
    """SD2's U-Net + SD's VAE (random weights), a 2-layer 1024-wide CLIP text encoder, tiny tokenizer (77 tokens).
    `unet_width`: `sd2_unet`'s channel scale."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=2,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).eval()
    unet = sd2_unet(width=unet_width)
    vae = sd_vae()
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def sdxl_unet(in_channels: int = 4):
    """Stable Diffusion XL base's U-Net architecture (2.57 B parameters with 4 input channels), random weights:
    no attention at the first level, 2 and 10 transformer layers at the next two, cross-attention width 2048, and
    the added embedding of 6 size ids (256 sinusoids each) and the 1280-wide pooled text embedding."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ).eval()


def save_sdxl_sized_backbone(path: Path, seed: int = 0) -> Path:
    """SDXL's U-Net + SD's VAE architecture (SDXL's VAE has SD's layout; scaling factor 0.13025), random weights,
    written as an fp16-only download (*.fp16.safetensors, 5.1 GB for the U-Net), which digseg finds and loads in
    the dtype asked for. Text encoders: 2-layer CLIP towers of SDXL's widths (768; 1280 with a 1280-wide
    projection) and the tiny tokenizer (77 tokens); real SDXL's are 12 and 32 layers (0.8 B parameters, frozen)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(max_length=77)

    def encoder(width: int, cls):
        return cls(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=2,
            num_attention_heads=width // 64, max_position_embeddings=77, hidden_act="gelu", projection_dim=width,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)).eval()

    vae = sd_vae()
    vae.register_to_config(scaling_factor=0.13025)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoder(768, CLIPTextModel), text_encoder_2=encoder(1280, CLIPTextModelWithProjection),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=sdxl_unet(), scheduler=tiny_scheduler(),
    )
    pipe.to(torch.float16).save_pretrained(path, variant="fp16")  # in place: one copy of the weights in memory
    return path


BACKBONES = {  # random_backbone's models -> the function that writes them
    "tiny": save_tiny_backbone, "tiny-sdxl": save_tiny_sdxl_backbone,
    "sd2": save_sd2_sized_backbone, "sdxl": save_sdxl_sized_backbone,
    "sd2-half": lambda path: save_sd2_sized_backbone(path, unet_width=0.5),  # SD2's blocks at half the channels
}


def random_backbone(folder: Path, model: str) -> Path:
    """The random Stable Diffusion backbone `model` (a key of `BACKBONES`: "tiny" and "tiny-sdxl" from
    `digseg.models.tiny`, "sd2": `save_sd2_sized_backbone`, "sd2-half": the same at `unet_width=0.5`, "sdxl":
    `save_sdxl_sized_backbone`) in `folder`: saved there (then memory trimmed) unless a model_index.json is there
    already, so several runs of one job can share one folder and build it once. Returns `folder`."""
    if not (folder / "model_index.json").is_file():
        BACKBONES[model](folder)
        trim_memory()
    return folder


# ------------------------------------------------------------------------------------------------ training
class StopSteps(Exception):
    """Raised by a benchmark's stand-in for the trainer's progress bar to end `Trainer._run_steps` after the
    last timed step (no checkpoint, no final save)."""
