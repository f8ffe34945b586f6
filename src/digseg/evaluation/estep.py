"""A pipeline's scores and throughput ((image, query) pairs per second) on a labelled dataset: binary, one query per
class but the background, in one 2-class confusion matrix; palette, one pass per image, as K-class mIoU."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .metrics import SegmentationMetric
from ..pipelines.pipeline import DiGSegPipeline
from ..pipelines.prompts import BACKGROUND, FOREGROUND, is_background


@dataclass(frozen=True)
class EStep:
    """An ensemble x steps setting, written "ExK" as in the paper (e.g. 4x2)."""

    ensemble_size: int
    steps: int

    @classmethod
    def parse(cls, text: str) -> "EStep":
        e, k = text.lower().split("x")
        return cls(int(e), int(k))


def _load(dataset: Dataset) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    samples = [dataset[i] for i in range(len(dataset))]
    return [s["image"] * 0.5 + 0.5 for s in samples], [s["label"] for s in samples]  # [3, H, W] in [0, 1]


@torch.no_grad()
def evaluate_binary(pipe: DiGSegPipeline, dataset: Dataset, setting: EStep, seed: int = 0, **call_kwargs) -> dict:
    images, labels = _load(dataset)
    ignore = getattr(dataset, "ignore_index", 255)
    metric = SegmentationMetric(2, ignore_index=ignore, class_names=[BACKGROUND, FOREGROUND])
    queried, seconds = 0, 0.0
    for c, name in enumerate(dataset.class_names):
        if is_background(name):
            continue
        start = time.perf_counter()
        out = pipe(images, prompt=name, ensemble_size=setting.ensemble_size, num_inference_steps=setting.steps,
                   batch_size=32, generator=torch.Generator().manual_seed(seed), show_progress_bar=False, **call_kwargs)
        seconds += time.perf_counter() - start
        queried += len(images)
        for label, pred in zip(labels, out.labels):
            target = torch.where(label == ignore, ignore, (label == c).long())  # 1 = the class
            metric.update(torch.as_tensor(pred), target)
    result = metric.compute()
    return {"mIoU": result["mIoU"], "IoU_foreground": result["per_class"][FOREGROUND] or 0.0,
            "images_per_s": queried / seconds, "queries": queried}


@torch.no_grad()
def evaluate_palette(pipe: DiGSegPipeline, dataset: Dataset, setting: EStep, seed: int = 0, **call_kwargs) -> dict:
    images, labels = _load(dataset)
    names = list(dataset.class_names)
    metric = SegmentationMetric(len(names), getattr(dataset, "ignore_index", 255), names)
    start = time.perf_counter()
    out = pipe(images, ensemble_size=setting.ensemble_size, num_inference_steps=setting.steps, batch_size=32,
               generator=torch.Generator().manual_seed(seed), show_progress_bar=False, **call_kwargs)
    seconds = time.perf_counter() - start
    for label, pred in zip(labels, out.labels):
        metric.update(torch.as_tensor(pred), label)
    result = metric.compute()
    return {"mIoU": result["mIoU"], "aAcc": result["aAcc"], "per_class": result["per_class"],
            "images_per_s": len(images) / seconds, "queries": len(images)}
