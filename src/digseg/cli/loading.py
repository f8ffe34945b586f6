"""Opening the model a command runs: a DiGSeg model folder, a folder written by `digseg export` (on onnxruntime),
or a base with LoRA adapters."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def load_model(model, placement, adapters: list[str] | None = None, use: str | None = None):
    """`model` loaded in the dtype and moved to the device of `placement` (torch.device, torch.dtype). An exported
    folder runs on CUDA's execution provider on a CUDA device, else the CPU's. With `adapters` (--adapter values):
    `model` is their base, each adapter is loaded onto it and `use` (default: the only one) is active."""
    from ..models.adapters import adapter_config
    from ..pipelines.pipeline import DiGSegPipeline
    from ..runtime.manifest import is_exported_folder
    from ..runtime.pipeline import OnnxDiGSegPipeline

    device, dtype = placement
    if not adapters:
        if use:
            raise ConfigError(f"--use-adapter {use}: no --adapter was given")
        if is_exported_folder(model):
            return OnnxDiGSegPipeline.from_pretrained(model, provider="cuda" if device.type == "cuda" else "cpu")
        return DiGSegPipeline.from_pretrained(model, dtype=dtype).to(device)
    named = parse_adapters(adapters)
    if use is None and len(named) > 1:
        raise ConfigError(f"several adapters ({', '.join(named)}): say which one predicts with --use-adapter NAME")
    use = use if use is not None else next(iter(named))
    if use not in named:
        raise ConfigError(f"--use-adapter {use}: no --adapter of that name (given: {', '.join(named)})")
    prediction_type = adapter_config(named[use]).get("prediction_type") or "sample"
    pipe = DiGSegPipeline.from_base(model, prediction_type=prediction_type, torch_dtype=dtype).to(device)
    for name, path in named.items():
        pipe.load_adapter(path, name=name, activate=False)
    pipe.set_adapter(use)
    return pipe


def parse_adapters(items: list[str]) -> dict[str, str]:
    """--adapter values ("NAME=PATH", or "PATH": named after its folder) -> {name: path}."""
    named: dict[str, str] = {}
    for item in items:
        name, eq, path = item.partition("=")
        if not eq:
            name, path = Path(item).name, item
        if not name or not path:
            raise ConfigError(f"--adapter takes NAME=PATH or PATH, got {item!r}")
        if name in named:
            raise ConfigError(f"--adapter: two adapters named {name!r}; name them apart with NAME=PATH")
        named[name] = path
    return named

