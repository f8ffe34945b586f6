"""A saved model folder is data: diffusers imports the module a model_index.json entry names and runs .py files a
folder ships, so `check_model_folder` refuses any entry other than the (library, class) pairs digseg writes
(`COMPONENTS`), another `_class_name` and any *.py file; after loading, `check_finite` refuses NaN or inf weights."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import DigsegError, read_json

# component -> the (library, class) pair digseg writes for it ("digseg.*": recorded under the full module path)
COMPONENTS: dict[str, tuple[str, str]] = {
    "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
    "scheduler": ("diffusers", "DDIMScheduler"), "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"), "text_pathway": ("digseg.models.text", "TextPathway"),
    "mask_decoder": ("digseg.models.mask_decoder", "LightMaskDecoder"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),  # SDXL's second encoder
    "tokenizer_2": ("transformers", "CLIPTokenizer"),
}
# [null, null] allowed: an open_clip text tower, SD 1.x / 2.x (no second encoder), no light mask decoder yet
OPTIONAL_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "mask_decoder")
TRAINED_COMPONENTS = ("unet", "text_pathway", "mask_decoder")
PIPELINE_CLASS = "DiGSegPipeline"


def check_model_index(index: Any, where: str, pipeline_class: type) -> None:
    """One-line DigsegError for any entry of model_index.json (`index`) that digseg does not write."""
    if not isinstance(index, dict):
        raise DigsegError(f"model folder {where}: model_index.json is not a JSON object")
    settings = set(inspect.signature(pipeline_class.__init__).parameters) - set(COMPONENTS) - {"self"}
    if index.get("_class_name") != PIPELINE_CLASS:
        raise DigsegError(f"model folder {where}: model_index.json _class_name is {index.get('_class_name')!r}; "
                          f"digseg loads only {PIPELINE_CLASS!r} folders and runs no pipeline code from a folder")
    for key, value in index.items():
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        entry = tuple(value) if pair and all(v is None or isinstance(v, str) for v in value) else None
        if key in COMPONENTS:
            if entry == COMPONENTS[key] or (entry == (None, None) and key in OPTIONAL_COMPONENTS):
                continue
            allowed = f'digseg loads "{key}" only as {".".join(COMPONENTS[key])}' + (
                ", or null when absent" if key in OPTIONAL_COMPONENTS else "")
        elif key == "_class_name" or key in settings or entry is None:
            continue
        else:
            allowed = f"digseg writes no such component (its components: {', '.join(COMPONENTS)})"
        shown = json.dumps(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise DigsegError(f'model folder {where}: model_index.json entry "{key}" names {shown}, which digseg does '
                          f"not load; {allowed}")


def check_model_folder(folder: Path, pipeline_class: type, where: str) -> None:
    """Check a local model folder's model_index.json (`check_model_index`) and refuse any *.py file in it."""
    check_model_index(read_json(folder / "model_index.json"), where, pipeline_class)
    for file in sorted(folder.rglob("*.py")):
        raise DigsegError(f"model folder {where} holds code ({file.relative_to(folder)}); a model folder is data "
                          "and digseg runs no code from one: remove the file")


def configured_setting(model: str | Path, key: str) -> Any:
    """Setting `key` of the model_index.json of a local folder or a cached hub model, read without loading any
    weights; None when there is no such file here or it cannot be read (loading the model then says why)."""
    from diffusers import DiffusionPipeline

    try:
        values = DiffusionPipeline.load_config(str(Path(model).expanduser()), local_files_only=True)
    except (OSError, ValueError):
        return None
    return values.get(key) if isinstance(values, dict) else None  # a file of another JSON value: None


@torch.no_grad()
def check_finite(where: str, components: dict[str, torch.nn.Module | None]) -> None:
    """One-line DigsegError if a tensor of the given (loaded) components holds a NaN or an infinity."""
    for component, module in components.items():
        if module is None:
            continue
        named = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()]
                 if t.is_floating_point() and t.device.type != "meta" and t.numel()]
        if not named:
            continue
        norms = torch._foreach_norm([t.detach() for _, t in named], ord=float("inf"))  # max |x|: NaN/inf propagate
        bad = (~torch.isfinite(torch.stack([n.float() for n in norms]))).nonzero().flatten().tolist()
        if bad:
            count = sum(int((~torch.isfinite(named[i][1])).sum()) for i in bad)
            raise DigsegError(f"model folder {where}: {component} holds {count} non-finite value(s) (NaN or inf; "
                              f"first in {named[bad[0]][0]}, {len(bad)} tensor(s)); digseg does not load "
                              "non-finite weights (a diverged training run?)")
