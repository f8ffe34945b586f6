"""`manifest.json` of an exported folder (`digseg.export.onnx_export`): the graphs and everything else inference
needs (keys: docs/export.md)."""

from __future__ import annotations

from itertools import accumulate, repeat
from operator import sub
from pathlib import Path

from ..errors import DigsegError, read_json

FORMAT = "digseg-onnx"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_FILES = {"vae_encoder": "vae_encoder.onnx", "unet": "unet.onnx", "vae_decoder": "vae_decoder.onnx",
               "light_decoder": "light_decoder.onnx", "text_encoder": "text_encoder.onnx"}
REQUIRED_GRAPHS = ("vae_encoder", "unet", "vae_decoder")


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """DDIM's "trailing" spacing (diffusers' DDIMScheduler.set_timesteps): T, T - T/K, ... rounded, minus one."""
    values = accumulate(repeat(num_train_timesteps / steps, steps - 1), sub, initial=float(num_train_timesteps))
    return [int(round(v)) - 1 for v in values]  # np.arange(T, 0, -T/K) without numpy float drift


def is_exported_folder(path: str | Path) -> bool:
    """Whether `path` is a folder written by `digseg export` (it holds manifest.json)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(folder: str | Path) -> dict:
    """The checked manifest of an exported folder; a one-line DigsegError names what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise DigsegError(f"{folder} is not an exported digseg folder: {MANIFEST_NAME} is missing")
    manifest = read_json(path, FORMAT, "a digseg export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DigsegError(f"{path}: format_version {manifest.get('format_version')!r}; this digseg reads "
                          f"{FORMAT_VERSION}")
    graphs = manifest.get("graphs") or {}
    for name in REQUIRED_GRAPHS:
        if not graphs.get(name):
            raise DigsegError(f"{path}: graph {name!r} is missing")
    for name, file in graphs.items():
        if file and (Path(file).name != file or not (folder / file).is_file()):
            raise DigsegError(f"{path}: graph {name!r} file {file!r} is not in {folder}")
    return manifest
