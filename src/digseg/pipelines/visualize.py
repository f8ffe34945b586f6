"""Predictions as pictures: palette label PNGs, colour overlays with a legend, probability and uncertainty maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .masks import make_palette
from .prompts import is_background


def palette_for(num_classes: int) -> np.ndarray:
    """Display colours uint8 [K, 3]: the codec palette, with class 0 shown grey instead of black."""
    colours = make_palette(max(num_classes, 2))[:num_classes].copy()
    colours[0] = (96, 96, 96)
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5,
            skip_background: bool = True) -> Image.Image:
    """image uint8 [H, W, 3], labels [H, W] -> RGB overlay (class 0 left untinted when skip_background)."""
    colours = palette_for(num_classes).astype(np.float32)
    valid = labels < num_classes
    mask = valid & (labels != 0) if skip_background else valid
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colours[labels[mask]]
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def grey_map(values: np.ndarray, vmax: float = 1.0) -> Image.Image:
    """values [H, W] in [0, vmax] -> 8-bit grey PNG."""
    return Image.fromarray((np.clip(values / vmax, 0, 1) * 255).round().astype(np.uint8), mode="L")


def side_by_side(*images: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return canvas


def tints_class_zero(class_names: list[str]) -> bool:
    """Whether overlays colour class 0: not when it is called "background" (binary prompts, most class lists)."""
    return not is_background(class_names[0])


def hex_colour(colour) -> str:
    """(r, g, b) -> '#rrggbb'."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in colour))


def legend(rows: list[tuple[str, tuple[int, int, int] | None]], font_size: int = 12) -> Image.Image:
    """A white RGB panel listing `rows` of (text, swatch colour): a filled, outlined square per colour, a
    crossed-out white square for None (pixels the overlay leaves untinted), then the text."""
    try:  # Pillow's built-in font at `font_size` px (FreeType builds), else its fixed bitmap font
        font = ImageFont.load_default(size=font_size)
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.textbbox((0, 0), text, font=font) for text, _ in rows]
    text_h = max([b[3] for b in boxes] + [font_size])
    pad = max(3, font_size // 3)
    swatch = max(8, text_h)
    row_h = swatch + pad
    width = pad + swatch + pad + max([b[2] for b in boxes] + [0]) + pad
    panel = Image.new("RGB", (width, pad + row_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, (text, colour) in enumerate(rows):
        y = pad + i * row_h
        box = (pad, y, pad + swatch - 1, y + swatch - 1)
        fill = (255, 255, 255) if colour is None else tuple(int(v) for v in colour)
        draw.rectangle(box, fill=fill, outline=(0, 0, 0))  # 1 px outline, the pure class colour inside
        if colour is None:  # crossed out, unlike a white class colour
            draw.line((box[0] + 1, box[3] - 1, box[2] - 1, box[1] + 1), fill=(128, 128, 128), width=max(1, swatch // 8))
        xy = (pad + swatch + pad, y + (swatch - text_h) // 2)
        try:
            draw.text(xy, text, fill=(0, 0, 0), font=font)
        except UnicodeError:  # the bitmap fallback font is latin-1 only
            draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=(0, 0, 0), font=font)
    return panel


def class_overlay(image: np.ndarray, labels: np.ndarray, class_names: list[str], alpha: float = 0.5) -> Image.Image:
    """`overlay` with class 0 untinted only when it is called "background"."""
    return overlay(image, labels, len(class_names), alpha=alpha, skip_background=not tints_class_zero(class_names))


def with_legend(tinted: Image.Image, labels: np.ndarray, class_names: list[str]) -> Image.Image:
    """An overlay + labels [H, W] -> the overlay with a legend to its right: the classes present, in class order (and
    "no class" for label 255)."""
    k = len(class_names)
    colours = palette_for(k)
    untinted = not tints_class_zero(class_names)
    rows = [(f"{class_names[0]} (untinted)", None) if c == 0 and untinted else (class_names[c], tuple(colours[c]))
            for c in np.flatnonzero(np.bincount(labels[labels < k].ravel(), minlength=k))]  # the classes present
    if (labels >= k).any():
        rows.append(("no class (untinted)", None))
    return side_by_side(tinted, legend(rows, font_size=int(np.clip(round(tinted.height / 30), 11, 64))))


@dataclass
class PredictionFiles:
    """The files `save_prediction` wrote, by role (None: not asked for); `probabilities`: (class name, path)."""

    label: Path | None = None
    overlay: Path | None = None
    overlay_legend: Path | None = None
    probabilities: list[tuple[str, Path]] = field(default_factory=list)
    uncertainty: Path | None = None


def save_prediction(out_dir: Path, stem: str, image: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                    class_names: list[str], uncertainty: np.ndarray | None = None,
                    probability_ids: np.ndarray | None = None,
                    kinds: Collection[str] = ("labels", "overlay", "probabilities", "uncertainty")) -> PredictionFiles:
    """Write the pictures of one prediction of `kinds` into `out_dir`. image uint8 [H, W, 3]; labels [H, W] int
    (255 = no class); probabilities [n, H, W] of the classes `probability_ids` [n] (default: all K); uncertainty
    [H, W] or None. Files: ``<stem>_label.png``, ``<stem>_overlay.png``, ``<stem>_overlay_legend.png``,
    ``<stem>_prob_<class>.png`` (a binary prompt's foreground only), ``<stem>_uncertainty.png`` (scaled to its max)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    k = len(class_names)
    files = PredictionFiles()
    if "labels" in kinds:
        files.label = out_dir / f"{stem}_label.png"
        png = Image.fromarray(labels.astype(np.uint8), mode="P")  # pixel value = class id (255 = none)
        png.putpalette(np.pad(palette_for(k)[:256], ((0, max(256 - k, 0)), (0, 0))).tobytes())  # for viewing
        png.save(files.label)
    if "overlay" in kinds:
        files.overlay, files.overlay_legend = out_dir / f"{stem}_overlay.png", out_dir / f"{stem}_overlay_legend.png"
        tinted = class_overlay(image, labels, class_names)
        tinted.save(files.overlay)
        with_legend(tinted, labels, class_names).save(files.overlay_legend)
    used: set[str] = set()
    ids = range(k) if probability_ids is None else [int(c) for c in probability_ids]
    for row, c in enumerate(ids if "probabilities" in kinds else []):
        if k == 2 and c == 0 and not tints_class_zero(class_names):
            continue  # binary prompt: the background map is 1 - foreground
        name = class_names[c]
        fragment = "".join(c if c.isalnum() or c in "-_" else "_" for c in name.strip())[:60] or "class"
        if fragment in used:
            fragment = f"{fragment}-{c}"
        used.add(fragment)
        path = out_dir / f"{stem}_prob_{fragment}.png"
        grey_map(probabilities[row]).save(path)
        files.probabilities.append((name, path))
    if uncertainty is not None and "uncertainty" in kinds:
        files.uncertainty = out_dir / f"{stem}_uncertainty.png"
        grey_map(uncertainty, vmax=max(float(uncertainty.max()), 1e-6)).save(files.uncertainty)
    return files
