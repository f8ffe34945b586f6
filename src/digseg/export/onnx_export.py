"""`digseg export`: a trained DiGSeg model -> a folder of ONNX graphs (batch, height and width dynamic) and
`manifest.json` (`digseg.runtime.manifest`); `quantize_folder`: int8 MatMul / Gemm weights. docs/export.md."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import DigsegError
from ..models.digseg_model import decode_latents, encode_latents, vae_scale_factor
from ..models.text import SDXLPromptEncoder
from ..pipelines.common import make_palette
from ..pipelines.prompts import class_prompts, palette_prompt
from ..runtime.manifest import FORMAT, FORMAT_VERSION, GRAPH_FILES, MANIFEST_NAME, read_manifest, trailing_timesteps

OPSET = 18
EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit: graphs whose weights pass it keep them in external data
EXPORT_DTYPES = ("fp32", "fp16")
QUANTIZATIONS = ("int8",)


class _Vae(nn.Module):
    """The VAE's scaled encoder (image [B, 3, H, W] -> posterior mean [B, 4, H/f, W/f]) or decoder (latents
    [B, 4, h, w] -> [B, 3, h*f, w*f])."""

    def __init__(self, vae, decode: bool) -> None:
        super().__init__()
        self.vae, self.decode = vae, decode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decode:
            return decode_latents(self.vae, x)
        return encode_latents(self.vae, x)


class _UNetWithText(nn.Module):
    """The U-Net with the per-level text pathway inside: (sample, timestep, encoder states) -> prediction."""

    def __init__(self, pipe) -> None:
        super().__init__()
        self.unet, self.text_pathway, self.prediction = pipe.unet, pipe.text_pathway, pipe.unet_prediction

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        levels = self.text_pathway(states)  # num_levels x [B, L, C] (then SDXL's pooled [B, P])
        return self.prediction(self.unet, sample, timestep, levels)  # [B, 4, h, w]


class _TextEncoders(nn.Module):
    """The text encoder: ids [B, L] -> [B, L, D]; SDXL's two: both ids -> `SDXLPromptEncoder.states`' packing."""

    def __init__(self, pipe) -> None:
        super().__init__()
        self.text_encoder, self.text_encoder_2 = pipe.text_encoder, pipe.text_encoder_2

    def forward(self, input_ids: torch.Tensor, input_ids_2: torch.Tensor | None = None) -> torch.Tensor:
        if self.text_encoder_2 is None:
            return self.text_encoder(input_ids)[0]
        return SDXLPromptEncoder.states(self, input_ids, input_ids_2)  # reads the same two attributes


def own_prompts(pipe) -> list[str]:
    """Every prompt a call on the model's own classes asks with the default template (palette, binary, per-class)."""
    names = list(pipe.class_names or [])
    template = pipe.config.prompt_template
    prompts = [palette_prompt(names)] if len(names) >= 2 else []
    for name in names:
        prompts.append(template.format(name.strip()))
        prompts += class_prompts(name, [template])
    return list(dict.fromkeys(prompts))


def _scheduler_facts(pipe) -> dict:
    scheduler = pipe.scheduler
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    config = json.loads(json.dumps(config, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
    total = int(scheduler.config.num_train_timesteps)
    return {"class": type(scheduler).__name__, "config": config, "num_train_timesteps": total,
            "prediction_type": scheduler.config.prediction_type, "timestep_spacing": scheduler.config.timestep_spacing,
            "alphas_cumprod": [float(a) for a in scheduler.alphas_cumprod.float().numpy()],
            "final_alpha_cumprod": float(scheduler.final_alpha_cumprod),
            "trailing_timesteps": {str(k): trailing_timesteps(total, k) for k in range(1, 11)}}


def _tokenizer_facts(slow, folder: Path, file: str) -> dict:
    """A CLIP tokenizer as a `tokenizers` file (no transformers needed to read it) and how ids are padded."""
    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        slow.save_pretrained(tmp)
        CLIPTokenizerFast.from_pretrained(tmp).backend_tokenizer.save(str(folder / file))
    return {"file": file, "max_length": int(slow.model_max_length), "pad_id": int(slow.pad_token_id),
            "pad_token": str(slow.pad_token)}


def export_pipeline(pipe, output: str | Path, dtype: str = "fp32", text_encoder: bool = True,
                    quantize: str | None = None) -> Path:
    """Write `pipe` (a loaded `DiGSegPipeline`) to `output` as ONNX graphs and a manifest; returns the folder.
    dtype "fp16" needs a CUDA GPU; `quantize="int8"`: `quantize_folder` of the fp32 graphs."""
    if dtype not in EXPORT_DTYPES:
        raise DigsegError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise DigsegError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if dtype == "fp16" and not torch.cuda.is_available():
        raise DigsegError("export --dtype fp16 needs a CUDA GPU (fp16 graphs are exported and checked on one); "
                          "use --dtype fp32 on this machine")
    if dtype == "fp16" and quantize:
        raise DigsegError("export: --quantize int8 applies to fp32 graphs; use --dtype fp32")
    if text_encoder and pipe.config.open_clip_text_encoder:
        raise DigsegError("export: an open_clip text encoder cannot be exported; use --no-text-encoder "
                          "(the model's own class prompts precomputed)")
    if not pipe.class_names and not text_encoder:
        raise DigsegError("export: --no-text-encoder needs a model with a class list (its prompts are precomputed)")
    folder = _new_folder(output)
    if quantize:
        with tempfile.TemporaryDirectory() as tmp:
            export_pipeline(pipe, Path(tmp) / "fp32", dtype, text_encoder)
            return quantize_folder(Path(tmp) / "fp32", folder)
    device = torch.device("cuda") if dtype == "fp16" else torch.device("cpu")
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    pipe = pipe.to(device, torch_dtype)
    f = vae_scale_factor(pipe.vae)
    m = pipe.pad_multiple
    channels = int(pipe.vae.config.latent_channels)
    size = 2 * m  # example size; heights and widths stay dynamic
    image = torch.zeros(2, 3, size, size, device=device, dtype=torch_dtype)
    latents = torch.zeros(2, channels, size // f, size // f, device=device, dtype=torch_dtype)
    sample = torch.zeros(2, 2 * channels, size // f, size // f, device=device, dtype=torch_dtype)
    timestep = torch.full((2,), 999, device=device, dtype=torch.long)
    spatial = {0: "batch", 2: "height", 3: "width"}
    graphs: dict[str, str | None] = dict.fromkeys(GRAPH_FILES)

    def write_graph(name: str, module: nn.Module, args: tuple, names: list[str], output: str, dynamic: dict) -> None:
        """One graph by torch's dynamo exporter; the axes in `dynamic` ({input: {axis: name}}) stay symbolic."""
        shapes = tuple({axis: torch.export.Dim.AUTO for axis in dynamic.get(n, {})} for n in names)  # as `args`
        external = sum(p.numel() * p.element_size() for p in module.parameters()) > EXTERNAL_DATA_BYTES
        program = torch.onnx.export(module.eval(), args, dynamo=True, input_names=names, output_names=[output],
                                    dynamic_shapes=shapes, opset_version=OPSET, verbose=False)
        program.save(str(folder / GRAPH_FILES[name]), external_data=external)
        graphs[name] = GRAPH_FILES[name]

    with torch.no_grad():
        write_graph("vae_encoder", _Vae(pipe.vae, decode=False), (image,), ["image"], "latent", {"image": spatial})
        if text_encoder:
            tokenizer = _tokenizer_facts(pipe.tokenizer, folder, "tokenizer.json")
            states = pipe.query_states([["x"], ["y"]])  # [2, L, D]
            ids = torch.zeros(2, tokenizer["max_length"], device=device, dtype=torch.long)
            text = {"kind": "encoder", "tokenizer": tokenizer, "tokenizer_2": None, "features": None, "prompts": None}
            names = ["input_ids"] if pipe.text_encoder_2 is None else ["input_ids", "input_ids_2"]
            if pipe.text_encoder_2 is not None:  # SDXL: both encoders in one graph, each with its own tokenizer
                text["tokenizer_2"] = _tokenizer_facts(pipe.tokenizer_2, folder, "tokenizer_2.json")
            write_graph("text_encoder", _TextEncoders(pipe), (ids,) * len(names), names, "states",
                        dict.fromkeys(names, {0: "batch"}))
        else:
            prompts = own_prompts(pipe)
            states = pipe.query_states([[p] for p in prompts])  # [P, L, D]
            np.save(folder / "text_features.npy", states.float().cpu().numpy())
            text = {"kind": "features", "tokenizer": None, "tokenizer_2": None, "features": "text_features.npy",
                    "prompts": prompts}
        text.update(hidden_size=int(states.shape[-1]), length=int(states.shape[1]))
        write_graph("unet", _UNetWithText(pipe), (sample, timestep, states[:2].to(torch_dtype)),
                    ["sample", "timestep", "states"], "prediction",
                    {"sample": spatial, "timestep": {0: "batch"}, "states": {0: "batch"}})
        write_graph("vae_decoder", _Vae(pipe.vae, decode=True), (latents,), ["latents"], "image", {"latents": spatial})
        if pipe.mask_decoder is not None:
            write_graph("light_decoder", pipe.mask_decoder, (latents,), ["latents"], "image", {"latents": spatial})
    config = pipe.config
    names = list(config.class_names or [])
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "digseg_version": __version__,
        "torch_version": torch.__version__, "opset": OPSET, "dtype": dtype, "quantize": None, "graphs": graphs,
        "class_names": names or None, "task": config.task, "objective": config.objective,
        "one_step_decoder": config.one_step_decoder, "prompt_template": config.prompt_template,
        "default_denoising_steps": int(config.default_denoising_steps),
        "default_processing_resolution": int(config.default_processing_resolution),
        "latent_channels": channels, "vae_scale_factor": int(f), "pad_multiple": int(m),
        "scheduler": _scheduler_facts(pipe),
        "mask_codec": {"binary": {"palette": [[0, 0, 0], [255, 255, 255]]},
                       "palette": {"num_classes": len(names), "temperature": 0.05,
                                   "palette": make_palette(len(names)).tolist()} if len(names) >= 2 else None},
        "text": text, "training_data": config.training_data, "backbone": config.backbone,
    }
    return _write_manifest(folder, manifest)


def quantize_folder(source: str | Path, output: str | Path) -> Path:
    """A copy of an exported fp32 folder whose graphs have int8 MatMul / Gemm weights (onnxruntime dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, manifest = Path(source), read_manifest(source)
    if manifest["dtype"] != "fp32" or manifest.get("quantize"):
        raise DigsegError(f"quantize: {source} is not an fp32 export")
    folder = _new_folder(output, source, lambda name: name == MANIFEST_NAME or name.endswith((".onnx", ".data")))
    for name in manifest["graphs"].values():
        if name:
            external = (source / f"{name}.data").is_file()  # where the exporter put weights over 2 GB
            quantize_dynamic(str(source / name), str(folder / name), op_types_to_quantize=["MatMul", "Gemm"],
                             weight_type=QuantType.QInt8, use_external_data_format=external)
    manifest["quantize"] = "int8"
    return _write_manifest(folder, manifest)


def precompute_own_prompts(source: str | Path, output: str | Path) -> Path:
    """A copy of an exported folder without its text encoder, the states of the model's own prompts (`own_prompts`)
    computed on onnxruntime and saved instead (as `--no-text-encoder` does at export time)."""
    from ..runtime.pipeline import OnnxDiGSegPipeline

    source, manifest = Path(source), read_manifest(source)
    if manifest["text"]["kind"] != "encoder":
        raise DigsegError(f"export: {source} has no text encoder (its prompts are already precomputed)")
    if not manifest.get("class_names"):
        raise DigsegError("export: --no-text-encoder needs a model with a class list (its prompts are precomputed)")
    runtime = OnnxDiGSegPipeline.from_pretrained(source)
    prompts = own_prompts(runtime)
    states = runtime.query_states([[p] for p in prompts])  # [P, L, D]
    encoder = manifest["graphs"]["text_encoder"]
    left_out = {MANIFEST_NAME, encoder, f"{encoder}.data", manifest["text"]["tokenizer"]["file"],
                (manifest["text"].get("tokenizer_2") or {}).get("file")}
    folder = _new_folder(output, source, left_out.__contains__)
    np.save(folder / "text_features.npy", states.astype(np.float32))
    manifest["graphs"]["text_encoder"] = None
    manifest["text"].update(kind="features", tokenizer=None, tokenizer_2=None, features="text_features.npy",
                            prompts=prompts)
    return _write_manifest(folder, manifest)


def _new_folder(output: str | Path, source: Path | None = None, skip=None) -> Path:
    """`output` created (refused when it exists and is not empty), with `source`'s files but those `skip` names."""
    folder = Path(output)
    if folder.exists() and any(folder.iterdir()):
        raise DigsegError(f"export: {folder} exists and is not empty; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir() if source else []:
        if not skip(item.name):
            shutil.copy2(item, folder / item.name)
    return folder


def _write_manifest(folder: Path, manifest: dict) -> Path:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return folder
