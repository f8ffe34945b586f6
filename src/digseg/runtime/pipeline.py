"""`OnnxDiGSegPipeline`: an exported folder (`digseg export`) run on onnxruntime with numpy, Pillow and tokenizers,
never importing torch, diffusers or transformers: `DiGSegPipeline.__call__` (`SegmentationCall`), its steps and
test protocols, the same `DiGSegOutput` (numpy arrays). Noise and seeds, prompts without a text encoder:
docs/export.md."""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from .. import __version__
from ..errors import DigsegError, first_line
from ..pipelines.common import SegmentationCall, to_image_list, uses_light_decoder, view_noise
from .manifest import read_manifest, trailing_timesteps
from .numpy_ops import (combine_members, combine_views, cut_views, ddim_step, decode_codec, native_outputs,
                        predicted_sample, resize)

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def resolve_providers(provider: str | Sequence[str] | None) -> list[str]:
    """"cpu" | "cuda" | "tensorrt" | "auto" (None: cpu) or onnxruntime provider names -> an available list."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider is None or isinstance(provider, str):
        key = ("cpu" if provider is None else provider).split(":")[0].lower()
        if key == "auto":
            key = next(choice for choice in ("tensorrt", "cuda", "cpu") if PROVIDERS[choice][0] in available)
        if key not in PROVIDERS and provider not in available:
            raise DigsegError(f"execution provider {provider!r}: choose cpu, cuda, tensorrt, auto or one of "
                              f"{', '.join(available)}")
        wanted = PROVIDERS.get(key, [provider])
    else:
        wanted = list(provider)
    if wanted[0] not in available:
        raise DigsegError(f"execution provider {wanted[0]} is not in this onnxruntime build (it has "
                          f"{', '.join(available)})")
    return [p for p in wanted if p in available]


class OnnxPromptEncoder:
    """`encode(prompts)` -> float32 [N, L, D], each distinct prompt encoded once (cached)."""

    def __init__(self, folder: Path, text: dict, runner=None) -> None:
        self.runner, self.tokenizers, self._cache = runner, [], {}
        if text["kind"] == "features":  # fixed: only the model's own prompts
            states = np.load(folder / text["features"], allow_pickle=False)  # [P, L, D]
            self._cache = {p: states[i] for i, p in enumerate(text["prompts"])}
        else:
            from tokenizers import Tokenizer

            for facts in filter(None, (text["tokenizer"], text.get("tokenizer_2"))):  # SDXL: two tokenizers
                tokenizer = Tokenizer.from_file(str(folder / facts["file"]))
                tokenizer.enable_truncation(max_length=int(facts["max_length"]))
                tokenizer.enable_padding(length=int(facts["max_length"]), pad_id=int(facts["pad_id"]),
                                         pad_token=facts["pad_token"])
                self.tokenizers.append(tokenizer)

    def token_ids(self, prompts: Sequence[str], which: int = 0) -> np.ndarray:
        """[N, L] int64 token ids of tokenizer `which` (1: SDXL's second)."""
        return np.array([e.ids for e in self.tokenizers[which].encode_batch(list(prompts))], dtype=np.int64)

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing and not self.tokenizers:
            known = ", ".join(repr(p) for p in list(self._cache)[:8])
            raise DigsegError(f"prompt {missing[0]!r}: this folder was exported with --no-text-encoder and holds only "
                              f"the model's own prompts ({known}, ...); export it with its text encoder for others")
        if missing:
            names = ("input_ids", "input_ids_2")[:len(self.tokenizers)]  # SDXL's graph takes both
            feed = {name: self.token_ids(missing, i) for i, name in enumerate(names)}
            self._cache.update(zip(missing, self.runner.run(None, feed)[0].astype(np.float32)))  # M x [L, D]
        return np.stack([self._cache[p] for p in prompts])  # [N, L, D]


class OnnxDiGSegPipeline(SegmentationCall):
    """An exported digseg model on onnxruntime; see the module docstring."""

    NUMPY_ONLY = True

    def __init__(self, folder: Path, manifest: dict, runners: dict) -> None:
        self.folder, self.manifest, self.runners = folder, manifest, runners
        self.scheduler = dict(manifest["scheduler"])
        self.scheduler["_alphas"] = np.asarray(self.scheduler["alphas_cumprod"], dtype=np.float32)
        self.prompt_encoder = OnnxPromptEncoder(folder, manifest["text"], runners.get("text_encoder"))
        codec = manifest["mask_codec"]["palette"]
        self.palette = None if codec is None else np.asarray(codec["palette"], dtype=np.uint8)
        self.temperature = 0.05 if codec is None else float(codec["temperature"])

    @classmethod
    def from_pretrained(cls, folder: str | Path, provider: str | Sequence[str] | None = None,
                        session_options=None) -> "OnnxDiGSegPipeline":
        """Load an exported folder; `provider`: "cpu" (default), "cuda", "tensorrt", "auto" or provider names."""
        import onnxruntime as ort

        folder = Path(folder).expanduser()
        manifest = read_manifest(folder)
        providers = resolve_providers(provider)
        runners = {}
        for name, file in manifest["graphs"].items():
            if file:
                try:
                    runners[name] = ort.InferenceSession(str(folder / file), sess_options=session_options,
                                                          providers=providers)
                except Exception as exc:  # onnxruntime raises its own exception types
                    raise DigsegError(f"cannot load {folder / file}: {first_line(exc)}") from exc
        return cls(folder, manifest, runners)

    @property
    def has_light_decoder(self) -> bool:
        return self.manifest["graphs"].get("light_decoder") is not None

    to_images, resize_image = staticmethod(to_image_list), staticmethod(functools.partial(resize, antialias=True))

    @property
    def config(self) -> SimpleNamespace:
        """The settings `DiGSegPipeline.config` has that callers read (class_names, task, default_* ...)."""
        keys = ("class_names", "task", "objective", "one_step_decoder", "prompt_template", "default_denoising_steps",
                "default_processing_resolution", "training_data", "backbone")
        return SimpleNamespace(**{k: self.manifest.get(k) for k in keys})

    @property
    def pad_multiple(self) -> int:
        return int(self.manifest["pad_multiple"])

    def runtime_info(self, num_processes: int = 1) -> dict:
        """What an output records about where it ran (`digseg.devices.runtime_info`'s keys)."""
        import onnxruntime as ort

        precision = self.manifest["dtype"] + (f"+{self.manifest['quantize']}" if self.manifest.get("quantize") else "")
        return {"device": f"onnxruntime:{self.providers[0]}", "device_name": platform.processor() or platform.machine(),
                "dtype": precision, "num_processes": num_processes, "torch": "not used", "diffusers": "not used",
                "onnxruntime": ort.__version__, "digseg": __version__, "memory_mib": None, "memory_reserved_mib": None}

    @property
    def providers(self) -> list[str]:
        return self.runners["unet"].get_providers()

    def query_states(self, table: Sequence[Sequence[str]]) -> np.ndarray:
        """[Q, L, D]: each query's prompt variants encoded and averaged (the pathway is affine, as in torch)."""
        sizes = [len(variants) for variants in table]
        states = self.prompt_encoder.encode([p for variants in table for p in variants])  # [sum(sizes), L, D]
        if max(sizes) == 1:
            return states
        return np.stack([chunk.mean(axis=0) for chunk in np.split(states, np.cumsum(sizes)[:-1])])

    def _run(self, name: str, **inputs: np.ndarray) -> np.ndarray:
        return self.runners[name].run(None, inputs)[0]

    def denoise(self, image_latents: np.ndarray, states: np.ndarray, steps: int, latents: np.ndarray) -> np.ndarray:
        """image_latents [m, 4, h, w], states [m, L, D], starting noise [m, 4, h, w] -> mask latents [m, 4, h, w]."""
        s = self.scheduler
        m = image_latents.shape[0]
        if self.manifest["objective"] == "one-step":  # zeros at t = T-1, read as x0
            t = s["num_train_timesteps"] - 1
            zeros = np.zeros_like(image_latents)
            pred = self._run("unet", sample=np.concatenate([image_latents, zeros], axis=1),
                             timestep=np.full((m,), t, dtype=np.int64), states=states)
            return predicted_sample(pred, zeros, float(s["_alphas"][t]), s["prediction_type"])
        for t in trailing_timesteps(s["num_train_timesteps"], steps):
            sample = np.concatenate([image_latents, latents], axis=1)  # [m, 8, h, w]
            pred = self._run("unet", sample=sample, timestep=np.full((m,), t, dtype=np.int64), states=states)
            latents = ddim_step(pred, t, latents, s, steps)
        return latents

    def _segment(self, pixels: np.ndarray, ids: list[int], states: np.ndarray, noise: np.ndarray, settings,
                 decoder: str):
        """One image's views: pixels [V, 3, H, W], its query ids into states [U, L, D], noise [V, E, 4, h, w]
        -> (probabilities [V, K, H, W], uncertainty [V, H, W] or None), as `LatentSegmentationMixin._segment_batch`."""
        v, ensemble = noise.shape[:2]
        q, mode, max_batch = len(ids), settings.mode, settings.max_unet_batch
        image_latents = self._run("vae_encoder", image=pixels)  # [V, 4, h, w]
        item_view, item_query, item_member = np.indices((v, q, ensemble)).reshape(3, -1)  # items (view, query, member)
        item_query = np.asarray(ids)[item_query]
        combine = not settings.decode_members and ensemble > 1
        chunk = max(ensemble, max_batch // ensemble * ensemble) if combine else max_batch
        decoded, spreads = [], []
        for start in range(0, len(item_query), chunk):
            sl = slice(start, start + chunk)
            latents = self.denoise(image_latents[item_view[sl]], states[item_query[sl]], settings.steps,
                                   noise[item_view[sl], item_member[sl]])  # [m, 4, h, w]
            if combine:
                latents = latents.reshape(-1, ensemble, *latents.shape[1:])  # [m/E, E, 4, h, w]
                spreads.append(latents.std(axis=1, ddof=1).mean(axis=1))  # [m/E, h, w]
                latents = combine_members(latents, settings.ensemble_reduction)  # [m/E, 4, h, w]
            images = self._run(decoder, latents=latents.astype(np.float32))  # [m', 3, H, W]
            decoded.append(decode_codec(images, self.palette if mode == "palette" else None, self.temperature))
        members = 1 if combine else ensemble
        probs = np.concatenate(decoded)  # [V * q * members, K or 1, H, W]
        size = probs.shape[-2:]
        if mode == "palette":
            probs = probs.reshape(v, members, -1, *size)  # [V, members, K, H, W]
        else:
            probs = probs[:, 0].reshape(v, q, members, *size).transpose(0, 2, 1, 3, 4)  # [V, members, q, H, W]
            if mode == "binary":
                probs = np.concatenate([1 - probs, probs], axis=2)  # [V, members, 2, H, W]
        if combine:  # members' latent spread, mean over queries, upsampled to pixels
            uncertainty = resize(np.concatenate(spreads).reshape(v, q, *spreads[0].shape[-2:]).mean(axis=1), size)
        else:
            uncertainty = probs.std(axis=1, ddof=1).mean(axis=1) if ensemble > 1 else None
        return probs.mean(axis=1), uncertainty

    def _segment_images(self, images, sized, grids, queries, states, settings, generator, noise):
        """`SegmentationCall._segment_images`, image by image."""
        light = uses_light_decoder(settings.mask_decoder, self.config, self.has_light_decoder)
        f, channels = self.manifest["vae_scale_factor"], self.manifest["latent_channels"]
        global_view, flip, states = settings.global_view, settings.flip, states.astype(np.float32)
        def numpy_rng(g) -> np.random.Generator:  # from a numpy generator, an int seed or a torch.Generator's seed
            return np.random.default_rng(int(g.initial_seed()) if hasattr(g, "initial_seed") else g)

        generator = [numpy_rng(g) for g in generator] if isinstance(generator, list) else numpy_rng(generator)
        results, uncertainty = [], []
        for i, (img, resized, boxes) in enumerate(zip(images, sized, grids)):
            size, test_size = img.shape[-2:], resized.shape[-2:]
            pixels = cut_views(resized, boxes, global_view, flip, self.pad_multiple)  # [V, 3, H', W']
            start = view_noise(i, boxes, [s // f for s in pixels.shape[-2:]], channels, settings,
                               self.manifest["objective"] == "one-step", noise, generator,
                               lambda shape, rng: rng.standard_normal(shape, dtype=np.float32))  # [V, E, C, h, w]
            probs, unc = self._segment(pixels.astype(np.float32), queries.query_ids[i], states, start, settings,
                                       "light_decoder" if light else "vae_decoder")
            combined = combine_views(probs, boxes, test_size, global_view, flip)  # [K, h, w]
            results.append(native_outputs(combined, size, queries.mode, settings))
            if unc is not None:
                uncertainty.append(resize(combine_views(unc[:, None], boxes, test_size, global_view, flip), size)[0])
        return results, uncertainty, np.stack
