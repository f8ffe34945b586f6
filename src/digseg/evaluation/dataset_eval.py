"""`digseg eval`: predict a split (`<predictions>/<stem>.png`, class ids, "none" 255 or 65535) and score label PNGs
by the dataset's `metric`; unreadable samples are skipped. N processes take every N-th sample, merged as one's."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.base import MetricKind, Sample, SegmentationDataset
from ..data.io import load_label, save_label_png
from ..distributed import gather_objects, is_main_process, shard, sum_tensor, wait_for_everyone
from ..errors import DataError, DigsegError
from ..outputs import DiGSegOutput
from ..pipelines.prompts import is_background
from ..seeding import seeded_generator
from .metrics import SegmentationMetric, binary_scores, per_image_dice_iou
from .protocols import TestProtocol, protocol_for

logger = logging.getLogger("digseg.eval")

# the scores `digseg eval` prints per kind of metric; validation during training tracks the first (higher is better)
SUMMARY_COLUMNS: dict[MetricKind, tuple[str, ...]] = {
    MetricKind.SEMANTIC: ("mIoU", "aAcc", "mAcc", "mDice"),
    MetricKind.OPEN_VOCAB: ("mIoU", "aAcc", "mAcc"),
    MetricKind.ROAD: ("IoU", "precision", "recall", "F1"),
    MetricKind.MEDICAL: ("Dice", "IoU"),
}


class Scores:
    """Running scores by the dataset's metric: `add` (or `skip`) each image, then `result()` over every process's."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset, self.kind = dataset, MetricKind(dataset.metric)
        self.confusion = SegmentationMetric(dataset.num_classes, dataset.ignore_index, list(dataset.class_names))
        # medical: {name: class ids}, the reader's `medical_targets` or else its last class
        self.targets = {} if self.kind is not MetricKind.MEDICAL else (
            getattr(dataset, "medical_targets", None) or {dataset.class_names[-1]: (dataset.num_classes - 1,)})
        self.per_image: dict[str, list] = {name: [] for name in self.targets}  # name -> [(index, (dice, iou))]
        self.skipped: list[tuple[int, str]] = []

    def add(self, index: int, pred: np.ndarray, label: np.ndarray) -> None:
        """Sample `index`'s prediction and label, int64 [H, W] class ids each."""
        self.confusion.update(pred, label)
        valid = label != self.dataset.ignore_index
        for name, ids in self.targets.items():
            self.per_image[name].append((index, per_image_dice_iou(np.isin(pred, ids) & valid,
                                                                   np.isin(label, ids) & valid)))

    def skip(self, index: int, message: str) -> None:
        self.skipped.append((index, message))
        logger.warning("skipped: %s", message)

    def result(self, present_only: bool | None = None) -> dict:
        """The metrics of every process's samples (a collective call under a launcher): percentages and `skipped`."""
        dataset, kind = self.dataset, self.kind
        confusion = SegmentationMetric(dataset.num_classes, dataset.ignore_index, list(dataset.class_names))
        for part in gather_objects([self.confusion]):
            confusion.merge(part)
        per_image = {name: [v for _, v in sorted(gather_objects(scores))] for name, scores in self.per_image.items()}
        skipped = [message for _, message in sorted(gather_objects(self.skipped))]
        if len(skipped) == len(dataset.samples):
            raise DigsegError(f"every sample was skipped; first problem: {skipped[0]}")
        present_only = kind is MetricKind.OPEN_VOCAB if present_only is None else present_only
        result = confusion.compute(present_only=present_only)
        out: dict = {"dataset": dataset.name, "split": dataset.split, "metric": kind.value,
                     "num_images": len(dataset.samples) - len(skipped),
                     **{key: result[key] for key in ("mIoU", "aAcc", "mAcc", "mDice", "per_class")},
                     "present_only": present_only}
        if kind is MetricKind.ROAD:
            out.update(binary_scores(confusion))
        if kind is MetricKind.MEDICAL:
            out["per_target"] = {name: {m: 100 * float(np.mean([v[j] for v in scores]))
                                        for j, m in enumerate(("Dice", "IoU"))} for name, scores in per_image.items()}
            out.update({m: float(np.mean([t[m] for t in out["per_target"].values()])) for m in ("Dice", "IoU")})
        out.update(skipped=len(skipped), skipped_samples=skipped)
        return out


def score_predictions(dataset: SegmentationDataset, predictions: str | Path, present_only: bool | None = None,
                      show_progress: bool = True) -> dict:
    """Score `<predictions>/<stem>.png` against the dataset's labels. Returns percentages and `skipped`."""
    pred_dir = Path(predictions)
    if not pred_dir.is_dir():
        raise DigsegError(f"predictions folder not found: {pred_dir}")
    scores = Scores(dataset)
    for index, sample in tqdm(shard(dataset.samples), desc="score", disable=not (show_progress and is_main_process())):
        try:
            label, path = dataset.read_label(sample), pred_dir / f"{sample.stem}.png"
            pred = load_label(path, what="prediction").astype(np.int64)
            if pred.shape != label.shape:
                raise DataError(f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but its label is "
                                f"{label.shape[1]}x{label.shape[0]}")
            scores.add(index, pred, label)
        except DataError as exc:
            scores.skip(index, str(exc))
    return scores.result(present_only)


def _query_kwargs(pipe, dataset: SegmentationDataset) -> dict:
    """Palette for a palette-trained model's own classes, a prompt for background + 1 class, else a query per class."""
    names = list(dataset.class_names)
    palette_trained = getattr(pipe.config, "task", None) != "binary"  # None: saved before the task was recorded
    if palette_trained and pipe.config.class_names and list(pipe.config.class_names) == names:
        return {}
    if len(names) == 2 and is_background(names[0]):
        return {"prompt": names[1]}
    return {"classes": names}


def default_protocol(pipe, dataset: SegmentationDataset) -> TestProtocol:
    """The dataset's test protocol: CAT-Seg's when its classes are queried one by one, else the closed-set one."""
    open_vocab = MetricKind(dataset.metric) is MetricKind.OPEN_VOCAB or "classes" in _query_kwargs(pipe, dataset)
    return protocol_for(dataset.name, open_vocab)


def predict_dataset(pipe, dataset: SegmentationDataset, out_dir: str | Path | None, ensemble_size: int = 1,
                    num_inference_steps: int | None = None, processing_resolution: int | None = None,
                    threshold: float = 0.5, seed: int = 0, show_progress: bool = True, top_k: int | None = None,
                    templates: str | None = None, mask_decoder: str = "auto", protocol: TestProtocol | None = None,
                    batch_size: int = 1, on_result: Callable[[int, Sample, DiGSegOutput], None] | None = None) -> dict:
    """`<out_dir>/<stem>.png` (`out_dir` not None) and `on_result(index, sample, output)` per readable image ->
    {"written", "skipped"}. Image i's noise is seeded by (seed, i), whatever the process or `batch_size`."""
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    query = _query_kwargs(pipe, dataset)
    if query:  # binary or per-class queries (a palette query has no template)
        query.update(templates=templates, **({"top_k": top_k} if "classes" in query else {}))
    settings = (protocol or TestProtocol()).call_kwargs()
    skipped, mine = [], shard(dataset.samples)
    pending: list[tuple[int, Sample, Image.Image]] = []

    def run() -> None:
        result = pipe([image for _, _, image in pending], ensemble_size=ensemble_size,
                      num_inference_steps=num_inference_steps, processing_resolution=processing_resolution,
                      generator=[seeded_generator(seed, index) for index, _, _ in pending], threshold=threshold,
                      batch_size=len(pending), show_progress_bar=False, mask_decoder=mask_decoder, **query, **settings)
        for j, (index, sample, _) in enumerate(pending):
            if out_dir is not None:
                save_label_png(Path(out_dir) / f"{sample.stem}.png", result.labels[j], dataset.num_classes)
            if on_result is not None:
                one = {k: None if v is None else v[j][None] for k, v in vars(result).items() if k != "class_names"}
                on_result(index, sample, dataclasses.replace(result, **one))  # image j as a one-image output
        pending.clear()

    for index, sample in tqdm(mine, desc=f"predict {dataset.name}", disable=not (show_progress and is_main_process())):
        try:
            pending.append((index, sample, dataset.read_image(sample)))
        except DataError as exc:
            skipped.append(str(exc))
            logger.warning("skipped: %s", exc)
        if len(pending) >= max(1, batch_size):
            run()
    if pending:
        run()
    wait_for_everyone()  # every PNG is written before anyone scores them
    return {"written": int(sum_tensor(torch.tensor(len(mine) - len(skipped)))), "skipped": gather_objects(skipped)}


def search_threshold(pipe, dataset: SegmentationDataset, **predict_kwargs) -> tuple[float, float]:
    """Binary datasets: (the foreground threshold of 0.05 ... 0.95 with the best mean per-image Dice, that Dice %)."""
    if dataset.num_classes != 2:
        raise DigsegError(f"threshold search applies to 2-class datasets; {dataset.name} has {dataset.num_classes}")
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    sums = np.zeros(len(grid) + 1)  # each threshold's Dice, then the count of images: running sums

    def score(index: int, sample: Sample, result: DiGSegOutput) -> None:
        try:
            label = dataset.read_label(sample)
        except DataError:
            return
        probs = result.probabilities[0, 1]  # [H, W] foreground
        valid = label != dataset.ignore_index
        for j, t in enumerate(grid):
            sums[j] += per_image_dice_iou((probs > t) & valid, (label == 1) & valid)[0]
        sums[-1] += 1

    predict_dataset(pipe, dataset, None, on_result=score, **predict_kwargs)  # scores only, no files
    sums = sum_tensor(torch.from_numpy(sums)).numpy()
    if sums[-1] == 0:
        raise DigsegError(f"threshold search: no readable sample in {dataset.name} {dataset.split}")
    best = int(np.argmax(sums[:-1]))
    return float(grid[best]), 100 * float(sums[best] / sums[-1])
