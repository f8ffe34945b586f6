"""Validation during training (`run.eval_every`; docs/training.md): the validation split scored with `digseg eval`'s
code, the best step kept in `checkpoints/best/`. A step is checkpointed, then validated, and a run resumed from
`step-N` validates step N again, so a kill during validation ends with the uninterrupted run's scores."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import Dataset

from ..data.base import MetricKind, SegmentationDataset
from ..data.synthetic import ItemsView
from ..distributed import is_main_process
from ..evaluation.dataset_eval import SUMMARY_COLUMNS, Scores, predict_dataset
from ..errors import DataError
from ..evaluation.protocols import TestProtocol


@dataclass(frozen=True)
class ValidationResult:
    metric: str  # the headline score's name, e.g. "mIoU"
    value: float  # its value (percent)
    scores: dict[str, float]  # every summary score as "val/<name>", e.g. {"val/mIoU": 41.2, "val/aAcc": 80.3}


@contextmanager
def evaluation_weights(modules: Sequence[nn.Module], ema: EMAModel | None = None,
                       params: Sequence[nn.Parameter] = ()) -> Iterator[None]:
    """`modules` in eval mode under no_grad, holding the EMA weights (into `params`) if `ema` is given."""
    modes = [m.training for m in modules]
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        if ema is not None:
            ema.restore(params)
        for m, mode in zip(modules, modes):
            m.train(mode)


def evaluate(pipe, dataset: Dataset, limit: int, seed: int, batch_size: int) -> ValidationResult:
    """Score `pipe` on the first `limit` images of `dataset` (1x1, seeded); every process predicts its share."""
    if isinstance(dataset, SegmentationDataset):  # what `predict_dataset` reads
        images = copy.copy(dataset)
        images.samples = dataset.samples[:limit]
    else:  # items without files (synthetic scenes)
        images = ItemsView(dataset, limit)
    scores = Scores(images)

    def score(index, sample, output) -> None:
        try:
            scores.add(index, output.labels[0], images.read_label(sample))
        except DataError as exc:
            scores.skip(index, str(exc))

    report = predict_dataset(pipe, images, None, ensemble_size=1, num_inference_steps=1, seed=seed,
                             show_progress=False, protocol=TestProtocol(), batch_size=batch_size, on_result=score)
    for message in report["skipped"] if is_main_process() else []:  # images that could not be read (all processes')
        scores.skip(-1, message)
    metrics = scores.result()
    columns = SUMMARY_COLUMNS[MetricKind(metrics["metric"])]  # the headline score first
    return ValidationResult(columns[0], float(metrics[columns[0]]), {f"val/{c}": float(metrics[c]) for c in columns})
