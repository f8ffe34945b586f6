"""The pipeline's lists of choices and the checks both pipelines (PyTorch and onnxruntime) make of a call's
arguments before any work, as plain Python (no torch import)."""

from __future__ import annotations

from ..errors import DigsegError
from .window_grid import INFERENCE_MODES, check_test_protocol, pair  # noqa: F401  (INFERENCE_MODES re-exported)

ENSEMBLE_REDUCTIONS = ("median", "mean")  # how ensemble members' latents are combined (ensemble.py)


def check_call(num_images: int, generator, ensemble_size: int, steps: int, ensemble_reduction: str, one_step: bool,
               max_probability_classes: int | None, processing_resolution: int | None, default_resolution: int,
               scale, mode: str, crop_size, stride, global_view: bool):
    """The arguments of a pipeline call that both pipelines take, checked: a one-line DigsegError naming a bad value.
    -> (processing resolution, sliding window (crop, stride) or None, scale (w, h) or None)."""
    if ensemble_reduction not in ENSEMBLE_REDUCTIONS:
        raise DigsegError(f"ensemble_reduction must be one of {', '.join(ENSEMBLE_REDUCTIONS)}, "
                          f"got {ensemble_reduction!r}")
    if ensemble_size < 1:
        raise DigsegError(f"ensemble_size must be >= 1, got {ensemble_size}")
    if steps < 1:
        raise DigsegError(f"num_inference_steps must be >= 1, got {steps}")
    if one_step and (ensemble_size > 1 or steps > 1):
        raise DigsegError(f"this model was trained with the one-step objective: it runs one deterministic pass, "
                          f"so {ensemble_size} ensemble members x {steps} steps would repeat the same result; "
                          "use ensemble_size=1 and num_inference_steps=1 (E-Step 1x1)")
    if scale is not None and processing_resolution is not None:
        raise DigsegError("give either scale or processing_resolution, not both")
    if max_probability_classes is not None and max_probability_classes < 1:
        raise DigsegError(f"max_probability_classes must be >= 1 or None, got {max_probability_classes}")
    if isinstance(generator, list) and len(generator) != num_images:
        raise DigsegError(f"got {len(generator)} generators for {num_images} images")
    resolution = default_resolution if processing_resolution is None else processing_resolution
    window = check_test_protocol(mode, crop_size, stride, global_view, resolution or default_resolution)
    return resolution, window, pair(scale, "scale")
