"""Turning predictions into pictures: palette label PNGs, colour overlays, probability and uncertainty maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .masks import make_palette

NO_CLASS_COLOUR = (0, 0, 0)


def palette_for(num_classes: int) -> np.ndarray:
    """Display colours uint8 [K, 3]: the codec palette, with class 0 shown grey instead of black."""
    colours = make_palette(max(num_classes, 2))[:num_classes].copy()
    colours[0] = (96, 96, 96)
    return colours


def label_png(labels: np.ndarray, num_classes: int) -> Image.Image:
    """labels [H, W] int -> 'P'-mode PNG: pixel value = class id (255 = none), palette for viewing."""
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[:num_classes] = palette_for(num_classes)[:256]
    image.putpalette(flat.reshape(-1).tolist())
    return image


def overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5,
            skip_background: bool = True) -> Image.Image:
    """image uint8 [H, W, 3], labels [H, W] -> RGB overlay (class 0 left untinted when skip_background)."""
    colours = palette_for(num_classes).astype(np.float32)
    valid = labels < num_classes
    tint = np.zeros_like(image, dtype=np.float32)
    tint[valid] = colours[labels[valid]]
    mask = valid & (labels != 0) if skip_background else valid
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint[mask]
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def grey_map(values: np.ndarray, vmax: float = 1.0) -> Image.Image:
    """values [H, W] in [0, vmax] -> 8-bit grey PNG."""
    return Image.fromarray((np.clip(values / vmax, 0, 1) * 255).round().astype(np.uint8), mode="L")


def side_by_side(*images: Image.Image) -> Image.Image:
    width = sum(im.width for im in images)
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return canvas


def safe_name(text: str) -> str:
    """A prompt or class name as a file-name fragment."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())[:60] or "class"


def save_prediction(out_dir: Path, stem: str, image: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                    class_names: list[str], uncertainty: np.ndarray | None = None) -> list[Path]:
    """Write <stem>_label.png, <stem>_overlay.png, <stem>_prob_<class>.png and <stem>_uncertainty.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    k = len(class_names)
    written = []
    for name, picture in [("label", label_png(labels, k)), ("overlay", overlay(image, labels, k))]:
        path = out_dir / f"{stem}_{name}.png"
        picture.save(path)
        written.append(path)
    for c, name in enumerate(class_names):
        if k == 2 and c == 0:
            continue  # binary: the background map is 1 - foreground
        path = out_dir / f"{stem}_prob_{safe_name(name)}.png"
        grey_map(probabilities[c]).save(path)
        written.append(path)
    if uncertainty is not None:
        path = out_dir / f"{stem}_uncertainty.png"
        grey_map(uncertainty, vmax=max(float(uncertainty.max()), 1e-6)).save(path)
        written.append(path)
    return written
