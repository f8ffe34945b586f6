"""What a Stable Diffusion backbone folder (or hub id) holds, read from its config files before any weights load:
`read_layout` (its family, or a one-line DigsegError for what digseg cannot fine-tune), `resolve_variant` (the
weight variant to load) and `backbone_record` (id, revision and variant, as a saved model records them)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import DigsegError, first_line, read_json

logger = logging.getLogger("digseg.models")

SUBFOLDERS = {  # the subfolders each family needs
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
}
WEIGHT_SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2")  # those that hold weight files
ADDED_CONDITIONS = {None: "sd", "text_time": "sdxl"}  # unet addition_embed_type -> family digseg supports
SDXL_TIME_IDS = 6  # original size (h, w), crop top-left (y, x), target size (h, w)

_SHARD = re.compile(r"-\d{5}-of-\d{5}$")
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<sha>[0-9a-f]{40})/?$")


def read_layout(path_or_id: str, local: bool, revision: str | None = None) -> str:
    """The family ("sd" / "sdxl") of a backbone folder or hub id; a one-line DigsegError for what digseg cannot
    fine-tune (DiT / MMDiT, U-Nets with inputs beyond text and SDXL's size ids) and for a local folder that is
    missing, incomplete or a DiGSeg model."""
    root = Path(path_or_id)
    if local:
        if not root.is_dir():
            raise DigsegError(f"{'not a model folder' if root.exists() else 'model folder not found'}: {root}")
        if (root / "text_pathway").is_dir():
            raise DigsegError(f"{root} is a DiGSeg model, not a Stable Diffusion backbone: load it with "
                              "DiGSegPipeline.from_pretrained (digseg train --pretrained continues training it)")
        index = read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
        unet = read_json(root / "unet" / "config.json") if (root / "unet" / "config.json").is_file() else None
    else:
        from diffusers import DiffusionPipeline, UNet2DConditionModel

        try:
            index = dict(DiffusionPipeline.load_config(path_or_id, revision=revision))
        except (OSError, ValueError):
            index = {}  # no model_index.json: the component configs decide
        unet = None
        if "unet" in index or "transformer" not in index:
            try:
                unet = dict(UNet2DConditionModel.load_config(path_or_id, subfolder="unet", revision=revision))
            except (OSError, ValueError) as exc:
                raise DigsegError(f"cannot load Stable Diffusion backbone {path_or_id}: {first_line(exc)}") from exc
    if unet is None and ("transformer" in index or (local and (root / "transformer").is_dir())):
        kind = index.get("transformer", [None, "a transformer"])[-1]
        raise DigsegError(f"{path_or_id} is a transformer-based (DiT / MMDiT) diffusion model "
                          f"({index.get('_class_name') or 'transformer/'}: {kind}); digseg needs a U-Net backbone "
                          "and unet/ is missing (use Stable Diffusion 1.x, 2.x or XL)")
    family = "sd" if unet is None else _family_of_unet(unet, str(path_or_id))
    missing = [name for name in SUBFOLDERS[family] if local and not (root / name).is_dir()]
    if missing:
        what = "a Stable Diffusion XL" if family == "sdxl" else "a Stable Diffusion"
        raise DigsegError(f"{root} is not {what} folder: missing {', '.join(m + '/' for m in missing)}")
    return family


def _family_of_unet(config: dict[str, Any], where: str) -> str:
    """The family whose conditioning a U-Net config asks for, or a DigsegError naming what it would need."""
    name = config.get("_class_name", "UNet2DConditionModel")
    if name != "UNet2DConditionModel":
        raise DigsegError(f"{where}: unet/ is a {name}; digseg fine-tunes a text-conditioned UNet2DConditionModel "
                          "(Stable Diffusion 1.x, 2.x or XL)")
    added = config.get("addition_embed_type")
    if added not in ADDED_CONDITIONS:
        raise DigsegError(f"{where}: the U-Net's added condition addition_embed_type={added!r} is not supported; "
                          "digseg conditions U-Nets on text alone (SD 1.x, 2.x) or on text and image size "
                          "('text_time', SDXL)")
    for key in ("class_embed_type", "num_class_embeds", "encoder_hid_dim_type"):
        if config.get(key) is not None:
            raise DigsegError(f"{where}: the U-Net needs an extra input ({key}={config[key]!r}) that a text-prompted "
                              "segmenter cannot give; use a text-to-image Stable Diffusion 1.x, 2.x or XL backbone")
    if config.get("in_channels", 4) != config.get("out_channels", 4):
        raise DigsegError(f"{where}: the U-Net takes {config.get('in_channels')} input channels for "
                          f"{config.get('out_channels')} latent channels (an inpainting or image-conditioned "
                          "model); digseg needs a text-to-image U-Net")
    return ADDED_CONDITIONS[added]


def weight_variants(folder: Path) -> set[str | None]:
    """The variants of the safetensors weights in one component folder (None: plain; "fp16" for
    *.fp16.safetensors, model.fp16-00001-of-00002.safetensors, ...); refused when it holds only pickled *.bin."""
    found: set[str | None] = set()
    for file in folder.glob("*.safetensors"):
        stem = _SHARD.sub("", file.name[: -len(".safetensors")])
        found.add(_SHARD.sub("", stem.rsplit(".", 1)[1]) if "." in stem else None)
    if not found and any(folder.glob("*.bin")):
        raise DigsegError(f"{folder} holds only pickled .bin weights; digseg loads safetensors weights only "
                          "(save the model again with safe_serialization, the diffusers default)")
    return found


def _names(variants) -> str:
    return ", ".join(sorted("plain" if v is None else v for v in variants))


def resolve_variant(path: Path, weight_folders: Sequence[str], requested: str | None) -> str | None:
    """The variant to load from the `weight_folders` of local folder `path` ("." for itself): `requested` if every
    one has it; else plain weights if all have them; else the one variant all have; else a one-line DigsegError."""
    held = {path / name: weight_variants(path / name) for name in weight_folders}
    empty = [str(folder) for folder, variants in held.items() if not variants]
    if empty:
        raise DigsegError(f"no safetensors weights in {', '.join(empty)}")
    if requested is not None:
        lacking = [folder for folder, variants in held.items() if requested not in variants]
        if lacking:
            raise DigsegError(f"no {requested!r} variant weights in {lacking[0]} (it holds: "
                              f"{_names(held[lacking[0]])}); choose a variant it holds, or none")
        return requested
    if all(None in variants for variants in held.values()):
        return None
    common = set.intersection(*held.values()) - {None}
    if len(common) == 1:
        variant = common.pop()
        logger.warning("%s holds only the %s variant of its weights (*.%s.safetensors): loading that variant, "
                       "in float32 unless a dtype is given (model.variant=%s)", path, variant, variant, variant)
        return variant
    detail = "; ".join(f"{folder.name}: {_names(v)}" for folder, v in held.items())
    raise DigsegError(f"{path} has no plain weights and no single variant to load ({detail}): choose one with "
                      "model.variant (--cfg-options model.variant=NAME)")


def backbone_record(pretrained: str, revision: str | None, variant: str | None) -> dict[str, str | None]:
    """{"pretrained", "revision", "variant"}; a Hugging Face cache folder (models--org--name/snapshots/<commit>) is
    recorded as its hub id and commit."""
    match = _SNAPSHOT.search(str(pretrained).replace("\\", "/"))
    if match:
        pretrained = f"{match['org']}/{match['name']}"
        revision = revision or match["sha"]
    return {"pretrained": str(pretrained), "revision": revision, "variant": variant}
