"""Optional text encoders from open_clip: CLIP variants and BiomedCLIP (an HF BERT text tower + projection), text
tower only, weights read with `weights_only=True`. `import open_clip` imports torchvision for image transforms digseg
never uses; where it is not installed, `import_open_clip()` puts inert placeholders in `sys.modules` during the
import only, so transformers' own torchvision detection still sees none."""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch import nn

from ..errors import DigsegError, first_line
from ..hub_ids import check_hub_id
from .text import CachedPromptEncoder

INSTALL_HINT = "open_clip text encoders need: pip install --no-deps open_clip_torch ftfy regex"


def _placeholder(name: str) -> type:
    """A torchvision name open_clip imports: subclassable at import time, unusable at run time."""
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError("a torchvision placeholder: torchvision is not installed, and digseg loads open_clip for "
                           "its text tower only (image transforms are unavailable)")

    return type(name, (), {"__init__": unavailable, "__module__": "torchvision (digseg placeholder)"})


def import_open_clip():
    """`open_clip`, imported with temporary torchvision placeholders where torchvision is absent."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    if importlib.util.find_spec("open_clip") is None:
        raise DigsegError(INSTALL_HINT)
    stubs: dict[str, types.ModuleType] = {}
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        # import what open_clip takes from transformers, and settle transformers' (cached) torchvision check,
        # before the stubs exist, so nothing in transformers ever observes them
        with contextlib.suppress(Exception):  # transformers is optional for open_clip itself
            import transformers
            from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig  # noqa: F401
            from transformers import modeling_outputs  # noqa: F401

            transformers.utils.is_torchvision_available()
        # the torchvision modules open_clip 3.x imports from (transform.py, utils.py), every name a `_placeholder`
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
                     "torchvision.ops.misc"):
            stubs[name] = module = types.ModuleType(name, "digseg placeholder while importing open_clip")
            module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
            module.__path__, module.__getattr__ = [], _placeholder
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(stubs[parent], child, module)
        stubs["torchvision.transforms"].InterpolationMode = enum.Enum(  # used in open_clip's default arguments
            "InterpolationMode", "NEAREST NEAREST_EXACT BILINEAR BICUBIC BOX HAMMING LANCZOS")
        sys.modules.update(stubs)
    try:
        return importlib.import_module("open_clip")
    except ImportError as exc:
        for name in [n for n in sys.modules if n == "open_clip" or n.startswith("open_clip.")]:
            del sys.modules[name]  # a half-imported open_clip must not be mistaken for a working one
        raise DigsegError(f"import open_clip failed{' without torchvision' if stubs else ''} ({exc}); "
                          f"{INSTALL_HINT}") from exc
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


def _resolve_config_and_checkpoint(name: str) -> tuple[dict, str]:
    """(model_cfg, checkpoint path) of an `hf-hub:` or `local-dir:` name, as open_clip.create_model finds them."""
    from open_clip import factory
    from open_clip.pretrained import download_pretrained_from_hf

    schema, identifier = factory.parse_model_name(name)
    if schema is None:
        raise DigsegError(f"unknown open_clip text encoder {name!r}: use hf-hub:org/name or local-dir:FOLDER")
    if schema == "hf-hub":  # cached, or the Hub reachable and holding it: else one line at once
        check_hub_id(identifier, "open_clip text encoder", "open_clip_config.json", "a local open_clip folder "
                     "(local-dir:FOLDER; model.text_encoder=open_clip:local-dir:FOLDER)", named_as_hub_id=True)
    model_cfg = factory.get_model_config(name)  # open_clip_config.json's model_cfg
    checkpoint = (download_pretrained_from_hf(identifier) if schema == "hf-hub"
                  else factory._find_checkpoint_in_dir(Path(identifier)))
    if checkpoint is None:
        raise DigsegError(f"{name}: no .safetensors/.bin/.pth weights in {identifier}")
    return model_cfg, checkpoint


class OpenCLIPPromptEncoder(CachedPromptEncoder):
    """Frozen open_clip text tower + tokenizer, as `CLIPPromptEncoder`. `model`: an open_clip model (`CLIP`,
    `CustomTextCLIP`) or its text tower (`TextTransformer`, `HFTextEncoder`)."""

    def __init__(self, model: nn.Module, tokenizer) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        text = getattr(model, "text", None)
        self.tower = text if isinstance(text, nn.Module) else model
        if all(hasattr(self.tower, a) for a in ("transformer", "proj", "config")):
            self.kind = "hf"
        elif all(hasattr(self.tower, a) for a in ("token_embedding", "positional_embedding", "ln_final")):
            self.kind = "clip"
            if getattr(self.tower, "cls_emb", None) is not None:
                raise DigsegError("open_clip text towers with an appended CLS embedding (CoCa) are not supported")
        else:
            raise DigsegError(f"{type(model).__name__} is not an open_clip CLIP model or text tower")

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "OpenCLIPPromptEncoder":
        """`hf-hub:org/name` (e.g. hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224) or
        `local-dir:/folder` (open_clip_config.json + weights)."""
        try:
            open_clip = import_open_clip()
            from open_clip import factory
            from open_clip.model import _build_text_tower

            model_cfg, checkpoint = _resolve_config_and_checkpoint(name_or_path)
            text_cfg = {**model_cfg["text_cfg"], "hf_model_pretrained": False}  # HF weights come from the checkpoint
            tower = _build_text_tower(model_cfg["embed_dim"], text_cfg)
            state = factory.load_state_dict(checkpoint, device="cpu", weights_only=True)
            if not any(key.startswith("text.") for key in state):  # CLIP's layout (CustomTextCLIP's: text.*)
                clip_text = ("text_projection", "positional_embedding", "token_embedding", "transformer", "ln_final")
                state = {("text." + k if k.startswith(clip_text) else k): v for k, v in state.items()}
            state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}  # the tower keys
            state.pop("transformer.embeddings.position_ids", None)  # not a parameter in current transformers
            missing = tower.load_state_dict(state, strict=False).missing_keys
            if missing:
                raise DigsegError(f"{name_or_path}: checkpoint {Path(checkpoint).name} lacks {len(missing)} "
                                  f"text-tower weights, e.g. {missing[:3]}")
            tokenizer = open_clip.get_tokenizer(name_or_path)
        except DigsegError:
            raise
        except Exception as exc:
            raise DigsegError(f"could not load open_clip text encoder {name_or_path!r}: {type(exc).__name__}: "
                              f"{first_line(exc)}") from exc
        return cls(tower, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    @property
    def hidden_size(self) -> int:
        if self.kind == "hf":
            return int(self.tower.output_dim)
        proj = self.tower.text_projection
        if proj is None:
            return int(self.tower.transformer.width)
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def _encode_new(self, prompts: list[str]) -> torch.Tensor:
        """Every token's final state through the tower's projection: [M, L, D]."""
        ids, tower = self.tokenizer(prompts).to(self.device), self.tower  # [M, L]
        if self.kind == "hf":
            mask = (ids != tower.config.pad_token_id).long()
            return tower.proj(tower.transformer(input_ids=ids, attention_mask=mask).last_hidden_state)
        if hasattr(tower, "_embeds"):  # TextTransformer: embeddings + causal (and, if configured, padding) mask
            x, attn_mask = tower._embeds(ids)
        else:  # CLIP keeps the text tower's parts as its own attributes (as in CLIP.encode_text)
            cast_dtype = tower.transformer.get_cast_dtype()
            x = tower.token_embedding(ids).to(cast_dtype) + tower.positional_embedding.to(cast_dtype)
            attn_mask = tower.attn_mask
        x = tower.ln_final(tower.transformer(x, attn_mask=attn_mask))
        proj = tower.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj
