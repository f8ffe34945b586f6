"""The files `digseg predict` writes for one image, those of the output kinds asked for (`OUTPUTS`), and its record
(docs/predict.md), from which summary.json and the report are written: name (the input's display name), source,
image_size {"width", "height"}, classes [{"id", "name", "pixels", "fraction", "colour", "tinted"}] (those present;
fraction = pixels / (W * H)), unlabelled_fraction (label 255), files (names relative to the output folder, None
when not written), uncertainty_note (why there is no uncertainty map). `<stem>_summary.json` adds the settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Collection

import numpy as np
from PIL import Image

from .predict_records import PER_IMAGE_OUTPUTS
from ..pipelines.visualize import hex_colour, palette_for, save_prediction, tints_class_zero

NO_UNCERTAINTY = "no uncertainty map: ensemble size 1 (pass --ensemble-size 2 or more)"


def class_fractions(labels: np.ndarray, class_names: list[str]) -> tuple[list[dict], float]:
    """labels [H, W] int (255 = no class) -> (one dict per class present, fraction of unlabelled pixels)."""
    k = len(class_names)
    counts = np.bincount(labels[labels < k].ravel(), minlength=k)
    colours = palette_for(k)
    total = labels.size
    classes = [{"id": int(c), "name": class_names[c], "pixels": int(counts[c]),
                "fraction": round(float(counts[c]) / total, 4), "colour": hex_colour(colours[c]),
                "tinted": bool(c != 0 or tints_class_zero(class_names))} for c in np.flatnonzero(counts)]
    return classes, round(float(total - counts.sum()) / total, 4)


def write_image_outputs(out_dir: Path, stem: str, name: str, source: Path, image: Image.Image, labels: np.ndarray,
                        probabilities: np.ndarray, class_names: list[str], uncertainty: np.ndarray | None,
                        settings: dict, probability_class_ids: np.ndarray | None = None,
                        kinds: Collection[str] = PER_IMAGE_OUTPUTS) -> dict:
    """Write the files of `kinds` for one image -> its record (module docstring). image RGB, W x H; labels [H, W]
    int; probabilities [n, H, W] of the classes `probability_class_ids` [n] (default: all K); uncertainty [H, W]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = save_prediction(out_dir, stem, np.asarray(image), labels, probabilities, class_names, uncertainty,
                            probability_class_ids, kinds)
    copy = None
    if "input" in kinds:  # the RGB pixels segmented, as displayed: JPEG (quality 92) for JPEG inputs, else PNG
        jpeg = source.suffix.lower() in (".jpg", ".jpeg")
        copy = out_dir / f"{stem}_input.{'jpg' if jpeg else 'png'}"
        image.save(copy, **({"quality": 92} if jpeg else {}))
    classes, unlabelled = class_fractions(labels, class_names)
    summary_path = out_dir / f"{stem}_summary.json" if "json" in kinds else None
    name_of = lambda path: path.name if path is not None else None  # noqa: E731
    record = {"name": name, "source": str(source), "image_size": {"width": image.width, "height": image.height},
              "classes": classes, "unlabelled_fraction": unlabelled,
              "files": {"input": name_of(copy), "label": name_of(files.label), "overlay": name_of(files.overlay),
                        "overlay_legend": name_of(files.overlay_legend), "summary": name_of(summary_path),
                        "probabilities": [{"class": c, "file": p.name} for c, p in files.probabilities],
                        "uncertainty": name_of(files.uncertainty)}}
    if files.uncertainty is None and "uncertainty" in kinds:
        record["uncertainty_note"] = NO_UNCERTAINTY
    if summary_path is not None:
        summary_path.write_text(json.dumps({**record, "settings": settings}, indent=2, ensure_ascii=False),
                                encoding="utf-8")
    return record
