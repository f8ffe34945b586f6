"""The manifest of an exported folder (`manifest.json`): what the graphs are and everything else inference needs.

Keys (written by `digseg.export.onnx_export.export_pipeline`):
- format, format_version, digseg_version, torch_version, opset, dtype ("fp32" | "fp16"), quantize (None | "int8");
- graphs: {"vae_encoder", "unet", "vae_decoder", "light_decoder", "text_encoder"} -> file name, or None when absent;
- class_names, task, objective ("diffusion" | "one-step"), one_step_decoder, prompt_template,
  default_denoising_steps, default_processing_resolution;
- latent_channels, vae_scale_factor, pad_multiple (every height and width the graphs see is a multiple of it);
- scheduler: class, config, num_train_timesteps, prediction_type, timestep_spacing ("trailing"), alphas_cumprod
  (float32 values), final_alpha_cumprod, trailing_timesteps ({"1": [999], "2": [999, 499], ...});
- mask_codec: {"binary": {"palette"}, "palette": {"num_classes", "temperature", "palette" [K, 3] uint8} or None};
- text: {"kind": "encoder" | "features", "tokenizer": {"file", "max_length", "pad_id", "pad_token"} or None,
  "features": "text_features.npy" or None, "prompts": the precomputed prompts or None, "hidden_size", "length"};
- training_data, backbone: as the model recorded them.
Torch-free: the onnxruntime pipeline reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DigsegError

FORMAT = "digseg-onnx"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_FILES = {"vae_encoder": "vae_encoder.onnx", "unet": "unet.onnx", "vae_decoder": "vae_decoder.onnx",
               "light_decoder": "light_decoder.onnx", "text_encoder": "text_encoder.onnx"}
REQUIRED_GRAPHS = ("vae_encoder", "unet", "vae_decoder")


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """DDIM's "trailing" spacing (diffusers' DDIMScheduler.set_timesteps): T, T - T/K, ... rounded, minus one."""
    ratio = num_train_timesteps / steps
    values = []
    t = float(num_train_timesteps)
    for _ in range(steps):  # np.arange(T, 0, -ratio) without numpy float drift
        values.append(t)
        t -= ratio
    return [int(round(v)) - 1 for v in values]


def is_exported_folder(path: str | Path) -> bool:
    """Whether `path` is a folder written by `digseg export` (it holds manifest.json)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(folder: str | Path) -> dict:
    """The checked manifest of an exported folder; a one-line DigsegError names what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise DigsegError(f"{folder} is not an exported digseg folder: {MANIFEST_NAME} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DigsegError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DigsegError(f"{path}: not a digseg export manifest (format must be {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DigsegError(f"{path}: format_version {manifest.get('format_version')!r}; this digseg reads {FORMAT_VERSION}")
    graphs = manifest.get("graphs") or {}
    for name in REQUIRED_GRAPHS:
        if not graphs.get(name):
            raise DigsegError(f"{path}: graph {name!r} is missing")
    for name, file in graphs.items():
        if file and (Path(file).name != file or not (folder / file).is_file()):
            raise DigsegError(f"{path}: graph {name!r} file {file!r} is not in {folder}")
    return manifest
