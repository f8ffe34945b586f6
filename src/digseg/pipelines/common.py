"""What both pipelines (PyTorch and onnxruntime) share, torch-free: argument checks, the test protocol's geometry
(mmseg's test resize and window grid), the mask decoder choice, the output; inputs as numpy arrays (paths, EXIF
applied; PIL images; numpy [H, W, 3] uint8 or float in [0, 1], or [H, W] grey) and the K-class palette."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..data.rescale import rescale_size
from ..errors import DigsegError
from ..models.choices import MASK_DECODERS
from ..outputs import DiGSegOutput
from .prompts import resolve_queries

ENSEMBLE_REDUCTIONS = ("median", "mean")  # how ensemble members' latents are combined
INFERENCE_MODES = ("whole", "slide")  # the whole image, or sliding windows (sliding.py)
PROBABILITY_CLASSES_KEPT = 16  # default number of classes whose native-size probabilities are returned


def processed_size(height: int, width: int, resolution: int, scale: tuple[int, int] | None = None,
                   keep_ratio: bool = True) -> tuple[int, int]:
    """(h, w) the model sees: the longer side resized to `resolution` (0: the native size), or with `scale` mmseg's
    test resize (mmcv `rescale_size` with keep_ratio, else exactly (width, height) = scale, CAT-Seg's 640 x 640)."""
    if scale is not None:
        if not keep_ratio:
            return int(scale[1]), int(scale[0])
        new_width, new_height = rescale_size(width, height, scale)
        return new_height, new_width
    if resolution <= 0:
        return height, width
    factor = resolution / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def padded_size(height: int, width: int, resolution: int, multiple: int, scale: tuple[int, int] | None = None,
                keep_ratio: bool = True) -> tuple[int, int]:
    """(H', W'): `processed_size` padded up to a multiple of `multiple` (the shape a batch shares)."""
    h, w = processed_size(height, width, resolution, scale, keep_ratio)
    return h + (-h) % multiple, w + (-w) % multiple


def pair(value: int | tuple[int, int] | list[int] | None, what: str) -> tuple[int, int] | None:
    """An int or (H, W) -> (H, W) of positive ints; None stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or not all(isinstance(v, int) and v >= 1 for v in value):
        raise DigsegError(f"{what} must be a positive int or (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def window_grid(height: int, width: int, crop: tuple[int, int],
                stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window over a height x width image, row by row (mmseg's grid, the last window of
    each axis shifted to end at the border)."""
    def starts(size: int, crop: int, stride: int) -> list[int]:
        return [min(i * stride, max(size - crop, 0)) for i in range(max(size - crop + stride - 1, 0) // stride + 1)]

    ch, cw = min(crop[0], height), min(crop[1], width)
    return [(y, y + ch, x, x + cw) for y in starts(height, crop[0], stride[0])
            for x in starts(width, crop[1], stride[1])]


def uses_light_decoder(choice: str, config, has_light: bool) -> bool:
    """Whether `mask_decoder` `choice` ("auto", "light", "vae") selects the light decoder (else the VAE). "auto" is
    the decoder a one-step model was trained through, else the light one when the model (`config`) has one."""
    if choice not in MASK_DECODERS:
        raise DigsegError(f"mask_decoder must be one of {', '.join(MASK_DECODERS)}, got {choice!r}")
    if choice == "auto" and config.objective == "one-step":
        choice = config.one_step_decoder or "auto"
    if choice == "light" and not has_light:
        raise DigsegError("this model has no light mask decoder: train one with `digseg train-mask-decoder`, "
                          "or use mask_decoder='vae'")
    return choice == "light" or (choice == "auto" and has_light)


class SegmentationCall:
    """`__call__` of both pipelines. A subclass has `config`, `query_states`, `has_light_decoder`, `to_images` (inputs
    -> N x [3, H, W] in [-1, 1]), `resize_image` (antialiased) and `_segment_images(images, sized, grids, queries,
    states, settings, generator, noise)`: each image's views (`grids`: its windows at the test scale) through its
    networks -> (per image (labels, probabilities, class ids) at the native size, uncertainty maps, a stack)."""

    NUMPY_ONLY = False

    @property
    def class_names(self) -> list[str] | None:
        return self.config.class_names

    def __call__(self, image: Any, prompt: str | Sequence[str] | None = None, classes: Sequence[str] | None = None,
                 ensemble_size: int = 1, num_inference_steps: int | None = None,
                 processing_resolution: int | None = None, batch_size: int = 1, generator: Any = None,
                 output_type: str = "np", threshold: float = 0.5, no_class_threshold: float | None = None,
                 templates: str | Sequence[str] | None = None, top_k: int | None = None, decode_members: bool = False,
                 ensemble_reduction: str = "median", mask_decoder: str = "auto", mode: str = "whole",
                 crop_size: int | tuple[int, int] | None = None, stride: int | tuple[int, int] | None = None,
                 global_view: bool = False, flip: bool = False, scale: tuple[int, int] | None = None,
                 keep_ratio: bool = True, max_probability_classes: int | None = PROBABILITY_CLASSES_KEPT,
                 max_unet_batch: int = 64, show_progress_bar: bool = True, return_dict: bool = True,
                 noise: Sequence[np.ndarray] | np.ndarray | None = None) -> DiGSegOutput | tuple:
        """Segment `image` (one or a list). Returns labels [N, H, W], probabilities [N, n, H, W] of the classes
        `probability_class_ids` [N, n], uncertainty [N, H, W] (lists of per-image arrays when sizes differ).

        `generator`: one torch.Generator, or one per image (then batching does not change results); onnxruntime
        also takes numpy generators and int seeds. `noise`: per image, the starting noise of its views
        [num_unique_views, E, C, h, w] (windows, then the global view; the mirrored image's views reuse them), or
        [E, C, h, w] in whole mode, instead of drawing it. `threshold`: binary foreground; `no_class_threshold`:
        per-class label 255 below it. Ensembles combine the members' latents by `ensemble_reduction` and decode
        once, or with `decode_members` average every member's probabilities (Marigold). Test protocol (`scale`,
        `keep_ratio`, `mode`, `crop_size`, `stride`, `global_view`, `flip`): docs/eval_protocols.md. Probabilities
        are returned for the `max_probability_classes` classes with most pixels (None: all). onnxruntime refuses
        top_k and output_type="pt" in one line; there `batch_size` and `show_progress_bar` change nothing.
        """
        # 1. check the inputs: a one-line DigsegError naming a bad value
        images = self.to_images(image)  # N x [3, H, W] in [-1, 1]
        steps = num_inference_steps or self.config.default_denoising_steps
        for name, value, default in (("top_k", top_k, None), ("output_type", output_type, "np")):
            if self.NUMPY_ONLY and value != default:
                raise DigsegError(f"{name}={value!r} is not supported by the onnxruntime pipeline (the U-Net graph "
                                  "has no cross-attention output; numpy outputs); run the PyTorch model for it")
        if output_type not in ("np", "pt"):
            raise DigsegError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        if top_k is not None and top_k < 1:
            raise DigsegError(f"top_k must be >= 1, got {top_k}")
        if ensemble_reduction not in ENSEMBLE_REDUCTIONS:
            raise DigsegError(f"ensemble_reduction must be one of {', '.join(ENSEMBLE_REDUCTIONS)}, "
                              f"got {ensemble_reduction!r}")
        if ensemble_size < 1:
            raise DigsegError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if steps < 1:
            raise DigsegError(f"num_inference_steps must be >= 1, got {steps}")
        if self.config.objective == "one-step" and (ensemble_size > 1 or steps > 1):
            raise DigsegError(f"this model was trained with the one-step objective: it runs one deterministic pass, "
                              f"so {ensemble_size} ensemble members x {steps} steps would repeat the same result; "
                              "use ensemble_size=1 and num_inference_steps=1 (E-Step 1x1)")
        if scale is not None and processing_resolution is not None:
            raise DigsegError("give either scale or processing_resolution, not both")
        if max_probability_classes is not None and max_probability_classes < 1:
            raise DigsegError(f"max_probability_classes must be >= 1 or None, got {max_probability_classes}")
        if isinstance(generator, list) and len(generator) != len(images):
            raise DigsegError(f"got {len(generator)} generators for {len(images)} images")
        if mode not in INFERENCE_MODES:
            raise DigsegError(f"mode must be one of {', '.join(INFERENCE_MODES)}, got {mode!r}")
        if mode == "whole" and (crop_size is not None or stride is not None or global_view):
            raise DigsegError("crop_size, stride and global_view apply to mode='slide' only")
        default_resolution = self.config.default_processing_resolution
        resolution = default_resolution if processing_resolution is None else processing_resolution
        window = None  # mode "slide": (crop, stride), by default the resolution square and 2/3 of it (mmseg 512 / 341)
        if mode == "slide":
            crop = pair(crop_size, "crop_size") or (resolution or default_resolution,) * 2
            step = pair(stride, "stride") or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
            if step[0] > crop[0] or step[1] > crop[1]:
                raise DigsegError(f"stride {step} is larger than crop_size {crop}: some pixels would be in no window")
            window = (crop, step)
        scale = pair(scale, "scale")
        if noise is not None and len(noise) != len(images):
            raise DigsegError(f"got {len(noise)} noise arrays for {len(images)} images")
        uses_light_decoder(mask_decoder, self.config, self.has_light_decoder)

        # 2. what is asked (binary prompts, the palette, or per-class queries); every prompt encoded once (cached)
        queries = resolve_queries(len(images), prompt, classes, templates, self.config.prompt_template,
                                  self.config.class_names)
        settings = SimpleNamespace(  # what the pipeline's networks and outputs need
            mode=queries.mode, ensemble_size=ensemble_size, steps=steps, max_unet_batch=max_unet_batch, top_k=top_k,
            decode_members=decode_members, ensemble_reduction=ensemble_reduction, mask_decoder=mask_decoder,
            global_view=global_view, flip=flip, threshold=threshold, no_class_threshold=no_class_threshold,
            max_probability_classes=max_probability_classes, batch_size=batch_size,
            show_progress_bar=show_progress_bar, output_type=output_type)
        states = self.query_states(queries.table)  # [U, L, D], projected per level when used

        # 3. each image resized to the test scale and its window grid (one window, the whole image, in whole mode)
        sized = [self.resize_image(img, processed_size(*img.shape[-2:], resolution, scale, keep_ratio))
                 for img in images]  # N x [3, h, w]
        grids = [window_grid(*img.shape[-2:], *(window or (tuple(img.shape[-2:]),) * 2)) for img in sized]
        single = [img.shape[-2:] for img, boxes in zip(sized, grids) if window and len(boxes) == 1]
        if single:
            (h, w), (ch, cw) = single[0], window[0]
            warnings.warn(f"mode='slide': one {ch}x{cw} window covers the whole {w}x{h} processed image "
                          f"({len(single)} of {len(grids)} image(s)), which equals mode='whole'; give a larger "
                          "scale or a smaller crop_size", UserWarning, stacklevel=2)

        # 4. the pipeline's networks, per image or per group of images; 5. stacked into [N, ...]
        results, uncertainty, stack = self._segment_images(images, sized, grids, queries, states, settings,
                                                           generator, noise)
        labels, probabilities, class_ids = (list(part) for part in zip(*results))
        same = stack if len({tuple(p.shape) for p in probabilities}) == 1 else list  # else lists of per-image arrays
        out = (same(labels), same(probabilities), same(uncertainty) if uncertainty else None, queries.class_names,
               stack(class_ids))
        return DiGSegOutput(*out) if return_dict else out


def view_noise(index: int, boxes: list, latent_size: tuple[int, int], channels: int, settings, one_step: bool, noise,
               generator, draw: Callable):
    """Starting noise of image `index`'s views [V, E, C, h, w]: one draw per window (and global view), the mirrored
    image's views reusing it; zeros for a one-step model, else the caller's `noise[index]` (numpy float32), else
    `draw(shape, generator or generator[index])`."""
    shape = (len(boxes) + int(settings.global_view), settings.ensemble_size, channels, *latent_size)
    if one_step:
        start = np.zeros(shape, dtype=np.float32)
    elif noise is not None:
        start = np.asarray(noise[index], dtype=np.float32)
        if start.size != np.prod(shape):
            raise DigsegError(f"noise[{index}] has shape {start.shape}; image {index}'s views need {shape} "
                              "(views with their own noise, E, C, h, w)")
        start = start.reshape(shape)
    else:
        start = draw(shape, generator[index] if isinstance(generator, list) else generator)
    return start[list(range(shape[0])) * 2] if settings.flip else start


def make_palette(num_classes: int) -> np.ndarray:
    """Fixed, well-separated colours for ``num_classes`` classes: uint8 ``[K, 3]``, by farthest-point sampling over
    the smallest ``n x n x n`` RGB grid (n >= 2) with ``n**3 >= K``, from black, ties to the lowest grid index
    (deterministic). K == 2: black, white."""
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    n = 2
    while n**3 < k:
        n += 1
    levels = np.rint(np.linspace(0.0, 255.0, n)).astype(np.int64)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)  # [n^3, 3], 0: black
    chosen = np.zeros(k, dtype=np.int64)
    min_d2 = ((grid - grid[0]) ** 2).sum(axis=1)  # [n^3] squared distance to the chosen set
    for i in range(1, k):
        j = int(np.argmax(min_d2))  # first maximum -> lowest index on ties
        chosen[i] = j
        np.minimum(min_d2, ((grid - grid[j]) ** 2).sum(axis=1), out=min_d2)
    return grid[chosen].astype(np.uint8)


def image_array(image: Any) -> np.ndarray:
    """A PIL image or a numpy array -> float32 [3, H, W] in [-1, 1]; DigsegError for another shape, range or type."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise DigsegError(f"unsupported image input of type {type(image).__name__} (give paths, PIL images, numpy "
                          "arrays or, to the PyTorch pipeline, torch tensors)")
    image = image[:, :, None] if image.ndim == 2 else image  # grey: repeated below
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DigsegError(f"image array must be [H, W, 3], got shape {tuple(image.shape)}")
    image = image[:, :, :3] if image.shape[2] != 1 else np.repeat(image, 3, axis=2)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32) / np.float32(127.5) - np.float32(1)
    array = image.astype(np.float32).transpose(2, 0, 1)
    if not np.isfinite(array).all():
        raise DigsegError("image contains NaN or infinite values")
    if array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise DigsegError(f"float images must have values in [0, 1], got [{array.min():.3g}, {array.max():.3g}]")
    return np.ascontiguousarray(array) * 2 - 1


def each_image(images: Any, convert: Callable[[Any], Any]) -> list:
    """`convert` applied to `images`, one image or a list of them; DigsegError for an empty list."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise DigsegError("no images given")
    return [convert(image) for image in images]


def _from_any(image: Any) -> np.ndarray:
    if not isinstance(image, (str, os.PathLike)):
        return image_array(image)
    try:
        with Image.open(image) as opened:
            return image_array(ImageOps.exif_transpose(opened))
    except (OSError, ValueError) as exc:
        raise DigsegError(f"cannot read image {Path(image)}: {exc}") from exc


def to_image_list(images: Any) -> list[np.ndarray]:
    return each_image(images, _from_any)
