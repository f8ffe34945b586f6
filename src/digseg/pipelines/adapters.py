"""Several domains on one loaded backbone, mixed into `DiGSegPipeline`: LoRA adapter folders (`digseg.models.adapters`)
loaded, switched at runtime (peft's LoRA matrices, the adapter's full parts and facts) and fused (docs/adapters.md)."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

from ..errors import DigsegError, first_line
from ..models.adapters import FACT_KEYS, AdapterParts, has_lora, load_lora, read_adapter, split_tensors
from ..models.mask_decoder import LightMaskDecoder
from ..models.text import TextPathway

BASE = None  # set_adapter(BASE): the backbone without adapters


class AdapterMixin:
    """`load_adapter`, `set_adapter`, `fuse_adapter` and `adapters` / `active_adapter` of `DiGSegPipeline`."""

    @classmethod
    def from_base(cls, pretrained: str | Path, revision: str | None = None, variant: str | None = None,
                  prediction_type: str = "sample", torch_dtype=None, **kwargs):
        """The backbone for adapters: a DiGSeg model folder (`from_pretrained`), else `from_backbone`."""
        path = Path(str(pretrained)).expanduser()
        if (path / "text_pathway").is_dir():
            return cls.from_pretrained(str(path), torch_dtype=torch_dtype, **kwargs)
        return cls.from_backbone(pretrained, prediction_type=prediction_type, revision=revision, variant=variant,
                                 torch_dtype=torch_dtype, **kwargs)

    def _adapter_table(self) -> dict:
        """name -> AdapterParts; BASE -> the backbone's own (once an adapter is loaded)."""
        return self.__dict__.setdefault("_adapter_parts", {})

    @property
    def adapters(self) -> list[str]:
        """The names of the loaded adapters, in loading order."""
        return [name for name in self._adapter_table() if name is not BASE]

    @property
    def active_adapter(self) -> str | None:
        return self.__dict__.get("_active_adapter", BASE)

    def current_parts(self) -> AdapterParts:
        """The modules and facts (FACT_KEYS) an adapter replaces, as the pipeline has them now (`save_adapter`'s)."""
        facts = {key: self.config.get(key) for key in FACT_KEYS if key in self.config}
        facts.update(processing_resolution=self.config.default_processing_resolution,
                     prediction_type=self.scheduler.config.prediction_type)
        return AdapterParts(self.unet.conv_in, self.text_pathway, self.mask_decoder, facts)

    def load_adapter(self, path: str | Path, name: str | None = None, activate: bool = True) -> str:
        """Load the adapter folder `path` as `name` (default: the folder's name), active unless not `activate`
        -> its name; a one-line DigsegError for a folder that is not an adapter or does not fit this backbone."""
        name = name or Path(path).name
        table = self._adapter_table()
        if name in table:
            raise DigsegError(f"an adapter named {name!r} is loaded already")
        config, tensors = read_adapter(path)
        wanted = config.get("prediction_type")
        if wanted and wanted != self.scheduler.config.prediction_type:
            raise DigsegError(f"adapter {path} predicts {wanted} but this backbone's scheduler predicts "
                              f"{self.scheduler.config.prediction_type}: load the base with prediction_type={wanted}")
        parts = split_tensors(tensors)
        if BASE not in table:
            table[BASE] = self.current_parts()  # the backbone's own
        device, dtype = self.unet.device, self.unet.dtype
        conv_in = copy.deepcopy(table[BASE].conv_in)
        pathway = TextPathway.from_config(config["text_pathway"])
        decoder = LightMaskDecoder.from_config(config["mask_decoder"]) if config.get("mask_decoder") else None
        for label, module in (("conv_in", conv_in), ("text_pathway", pathway), ("mask_decoder", decoder)):
            if module is None:
                continue
            try:
                module.load_state_dict(parts.get(label, {}))
            except RuntimeError as exc:
                raise DigsegError(f"adapter {path}: its {label} does not fit this backbone: "
                                  f"{first_line(exc)}") from exc
            module.to(device, dtype).eval().requires_grad_(False)
        load_lora(self.unet, name, config, parts.get("unet", {}), str(path))
        self.unet.requires_grad_(False).to(device, dtype)
        table[name] = AdapterParts(conv_in, pathway, decoder, {key: config.get(key) for key in FACT_KEYS})
        self.set_adapter(name if activate else self.active_adapter)
        return name

    def set_adapter(self, name: str | None) -> None:
        """Make adapter `name` (None: the base) active: its LoRA matrices, full parts and facts, in the same U-Net."""
        table = self._adapter_table()
        if name is not BASE and name not in table:
            known = ", ".join(self.adapters) or "none loaded"
            raise DigsegError(f"no adapter named {name!r} (loaded: {known})")
        if name is BASE:
            if has_lora(self.unet):
                self.unet.disable_adapters()
        else:
            self.unet.enable_adapters()
            self.unet.set_adapter(name)
        parts = table.get(name)
        if parts is not None:  # nothing loaded yet: the base is in place
            self.unet.conv_in = parts.conv_in
            self.register_modules(text_pathway=parts.text_pathway, mask_decoder=parts.mask_decoder)
            facts = parts.facts
            self.set_class_names(facts.get("class_names"))
            values = {"task": facts.get("task"), "one_step_decoder": facts.get("one_step_decoder")}
            for key, config_key in (("prompt_template", "prompt_template"), ("objective", "objective"),
                                    ("processing_resolution", "default_processing_resolution")):
                if facts.get(key) is not None:
                    values[config_key] = facts[key]
            self.register_to_config(**values)
        self.__dict__["_active_adapter"] = name

    def fuse_adapter(self, save_directory: str | Path | None = None):
        """A new plain pipeline (one more U-Net in memory) with the active adapter's LoRA merged and its parts and
        facts, saved to `save_directory` if given; this pipeline is left as it was."""
        name = self.active_adapter
        if name is BASE:
            raise DigsegError("fuse_adapter: no adapter is active (set_adapter(name) first)")
        unet = copy.deepcopy(self.unet)
        unet.fuse_lora(adapter_names=[name])
        unet.unload_lora()  # peft's layers replaced by the plain ones, holding the fused weights
        accepted = set(inspect.signature(type(self).__init__).parameters)
        kwargs = {**self.config, **self.components, "unet": unet, "text_pathway": copy.deepcopy(self.text_pathway),
                  "mask_decoder": copy.deepcopy(self.mask_decoder)}
        fused = type(self)(**{k: v for k, v in kwargs.items() if k in accepted})
        if save_directory is not None:
            fused.save_pretrained(save_directory)
        return fused
