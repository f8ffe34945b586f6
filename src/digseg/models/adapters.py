"""LoRA adapters (peft) on the DiGSeg U-Net, and the adapter folder that holds one domain: LoRA matrices on the
U-Net's frozen layers (`optim.lora_targets`), and the parts a domain needs in full, kept outside peft (whose
`modules_to_save` diffusers' adapter switching ignores): the widened `conv_in`, the text pathway, the mask decoder.

The folder (`save_adapter` / `read_adapter`; nothing is unpickled, a folder that does not fit is refused):
docs/adapters.md, "The adapter folder"."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import DigsegError, first_line, read_json

TRAINED_ADAPTER = "trained"  # the peft adapter name a training run uses
FORMAT = "digseg-adapter/1"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "README.md"
FACT_KEYS = ("class_names", "task", "processing_resolution", "prompt_template", "prediction_type", "objective",
             "one_step_decoder")


def require_peft():
    """peft's LoraConfig and its state-dict helpers, or a one-line install hint."""
    try:
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    except ImportError as exc:
        raise DigsegError(f'LoRA adapters need peft: pip install -e ".[lora]" ({first_line(exc)})') from exc
    return LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict


def has_lora(unet: nn.Module) -> bool:
    return bool(getattr(unet, "peft_config", None))


def add_lora(unet: nn.Module, rank: int, alpha: float | None, targets: list[str] | tuple[str, ...],
             name: str = TRAINED_ADAPTER, seed: int | None = None) -> None:
    """Inject LoRA (scale alpha / rank; alpha None = rank) into `targets` of `unet` as the active adapter `name`:
    lora_A drawn with `seed` (the global generator left as it was), lora_B zero, so it computes what the base does."""
    LoraConfig, _, _ = require_peft()
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=list(targets))
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            unet.add_adapter(config, adapter_name=name)
        except ValueError as exc:
            raise DigsegError(f"optim.lora_targets {list(targets)}: {first_line(exc)}") from exc


def lora_state_dict(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter `name`'s LoRA matrices, keyed as peft saves them (no adapter name in the keys)."""
    _, get_state, _ = require_peft()
    return {k: v.detach().clone() for k, v in get_state(unet, adapter_name=name).items()}


@dataclass
class AdapterParts:
    """What one domain puts into a loaded backbone: conv_in, the text pathway and the light mask decoder (None:
    none), with the domain's facts (FACT_KEYS) that the pipeline's config takes while it is active."""

    conv_in: nn.Module
    text_pathway: nn.Module
    mask_decoder: nn.Module | None
    facts: dict[str, Any] = field(default_factory=dict)


def save_adapter(folder: str | Path, lora: dict[str, torch.Tensor], parts: AdapterParts, base: dict[str, Any],
                 rank: int, alpha: float | None, targets: list[str]) -> Path:
    """Write the adapter folder (docs/adapters.md); `base`: the backbone's {"pretrained", "revision", "variant"}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"unet.{k}": v for k, v in lora.items()}
    for prefix, module in (("conv_in", parts.conv_in), ("text_pathway", parts.text_pathway),
                           ("mask_decoder", parts.mask_decoder)):
        if module is not None:
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    config = {"format": FORMAT, "base": {key: base.get(key) for key in ("pretrained", "revision", "variant")},
              "lora": {"rank": rank, "alpha": rank if alpha is None else alpha, "targets": list(targets)},
              **{name: None if module is None else {k: v for k, v in module.config.items() if not k.startswith("_")}
                 for name, module in (("text_pathway", parts.text_pathway), ("mask_decoder", parts.mask_decoder))},
              **{key: parts.facts.get(key) for key in FACT_KEYS}}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    backbone, alpha, classes = config["base"], config["lora"]["alpha"], config["class_names"] or []
    count = sum(t.numel() for t in tensors.values())
    lora_count = sum(t.numel() for k, t in tensors.items() if k.startswith("unet."))
    (folder / CARD_FILE).write_text("\n".join([  # a short model card: what it is, its base and domain, how to use it
        "---", "library_name: digseg", "tags: [segmentation, lora, digseg-adapter]", "---", "",
        "# DiGSeg LoRA adapter", "",
        f"A LoRA adapter (rank {rank}, alpha {alpha}, on {', '.join(targets)}) with the "
        f"domain's conv_in, text pathway{' and light mask decoder' if config['mask_decoder'] else ''} in full.",
        "",
        f"- base: `{backbone['pretrained']}` (revision {backbone['revision']}, variant {backbone['variant']})",
        f"- task: {config['task']}; processing resolution: {config['processing_resolution']}",
        f"- classes ({len(classes)}): {', '.join(classes[:12]) + (', ...' if len(classes) > 12 else '')}",
        f"- parameters: {count:,} ({lora_count:,} in the LoRA matrices)", "",
        "```", f"digseg predict --model {backbone['pretrained']} --adapter domain=PATH_TO_THIS_FOLDER --input IMAGES "
        "--output OUT", "```", "",
    ]))
    return folder


def adapter_config(folder: str | Path) -> dict[str, Any]:
    """The config of adapter folder `folder` (no tensors read); DigsegError in one line for a folder that is not one."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise DigsegError(f"{folder} is not a DiGSeg adapter folder: {CONFIG_FILE} or {WEIGHTS_FILE} is missing")
    return read_json(config_path, FORMAT, "a DiGSeg adapter config")


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of an adapter folder; DigsegError in one line for a folder that is not one."""
    config, weights_path = adapter_config(folder), Path(folder) / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError) as exc:
        raise DigsegError(f"cannot read {weights_path}: {first_line(exc)}") from exc
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise DigsegError(f"{weights_path}: tensor {bad[0]} holds a NaN or an infinity")
    return config, tensors


def split_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet.x": ., "conv_in.y": ., ...} -> {"unet": {"x": .}, "conv_in": {"y": .}, ...}."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        parts.setdefault(prefix, {})[rest] = value
    return parts


def load_lora(unet: nn.Module, name: str, config: dict[str, Any], lora: dict[str, torch.Tensor], where: str) -> None:
    """Inject adapter `name` into `unet` (diffusers' add_adapter) and set its LoRA matrices, which must fit exactly."""
    LoraConfig, _, set_state = require_peft()
    if name in (getattr(unet, "peft_config", None) or {}):
        raise DigsegError(f"an adapter named {name!r} is loaded already")
    lora_config = LoraConfig(r=int(config["lora"]["rank"]), lora_alpha=config["lora"]["alpha"],
                             target_modules=list(config["lora"]["targets"]))
    try:
        with warnings.catch_warnings():  # several adapters on one U-Net are the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
            unet.add_adapter(lora_config, adapter_name=name)
        result = set_state(unet, lora, adapter_name=name)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise DigsegError(f"adapter {where} does not fit this backbone: {first_line(exc)}") from exc
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = sorted(set(lora_state_dict(unet, name)) - set(lora))
    if unexpected or missing:
        unet.delete_adapters(name)
        raise DigsegError(f"adapter {where} does not fit this backbone: "
                          f"{'unexpected ' + unexpected[0] if unexpected else 'missing ' + missing[0]}")
