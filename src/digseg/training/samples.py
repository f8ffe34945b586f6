"""The data stage of training: which samples each micro-step reads, and reading + augmenting them in workers.

`MicroStepSampler` yields each micro-step's requests `(index, micro_step, slot)` for this process (`slot`: the
sample's place in the global batch, batches.py); `TrainingSamples` reads and augments a request with the generator
of (seed, micro_step, slot), so a sample depends on its request alone, not on workers, processes or resumes. One
DataLoader spans the run (its workers live as long), stacks each micro-step (`collate_samples`) and pins it on CUDA.

A sample that cannot be read does not raise in the worker (PyTorch would wrap it in a traceback): its batch carries
the error, raised in the training process as a one-line `DataError`. With `skip_bad` (data.bad_samples: skip) it is
replaced by the next readable one in dataset order (the same on every run, so resume stays exact) and listed in
the batch's `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.augment import Augmentation, apply_augmentation
from ..data.check import DataCheck
from ..errors import ConfigError, DataError, DigsegError, first_line
from ..seeding import seeded_generator
from .batches import LatentBatcher, sample_indices

AUGMENT_STREAM = 1  # 4th seeding key: a slot's augmentation draws, apart from its query/noise/timestep draws

Request = tuple[int, int, int]  # (sample index, micro-step, slot in the global batch)


def augmentation_generator(seed: int, micro_step: int, slot: int) -> torch.Generator:
    return seeded_generator(seed, micro_step, slot, AUGMENT_STREAM)


class TrainingSamples(Dataset):
    """Request (index, micro_step, slot) -> {"request", "image": float [3, h, w] in [-1, 1], "label": int64
    [h, w]} at the training crop (h, w), or {"request", "error": "one line"}; with `read=False`, {"request"}
    alone (latents come from a cache, and the batcher reads a sample itself only when its latents are missing).

    `dataset` gives native samples through `load_pair(i)` -> (RGB PIL image, int label [H, W]), as every
    registered reader and `SyntheticScenes` do."""

    def __init__(self, dataset: Dataset, augmentation: Augmentation, seed: int, ignore_index: int = 255,
                 read: bool = True, skip_bad: bool = False) -> None:
        if not hasattr(dataset, "load_pair"):
            raise ConfigError(f"{type(dataset).__name__} has no load_pair(i) -> (RGB image, label): training "
                              "reads native samples to augment them")
        self.dataset, self.augmentation, self.seed = dataset, augmentation, seed
        self.ignore_index, self.read, self.skip_bad = ignore_index, read, skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int, micro_step: int, slot: int) -> dict:
        image, label = self.dataset.load_pair(index)  # DataError naming the file when unreadable
        gen = augmentation_generator(self.seed, micro_step, slot)
        pixels, label = apply_augmentation(image, label, self.augmentation, gen, self.ignore_index)
        return {"image": pixels, "label": label}

    def __getitem__(self, request: Request) -> dict:
        """{"request", "image", "label", "skipped": [problems of unreadable samples replaced]} or {"request",
        "error"}; the request's index is the sample's actually read."""
        if not self.read:
            return {"request": request}
        index, micro_step, slot = request
        skipped: list[str] = []
        for offset in range(len(self) if self.skip_bad else 1):
            i = (index + offset) % len(self)
            try:
                return {"request": (i, micro_step, slot), **self.sample(i, micro_step, slot), "skipped": skipped}
            except (DigsegError, OSError, ValueError) as exc:  # DataError names the file; the others come from PIL
                skipped.append(first_line(exc))
        return {"request": request, "error": skipped[0] if len(skipped) == 1 else
                f"none of the {len(self)} samples can be read (first: {skipped[0]})"}


@dataclass
class SampleBatch:
    """One micro-step's samples on this process."""

    micro_step: int
    indices: list[int]
    slots: list[int]
    images: torch.Tensor | None  # [B, 3, h, w] in [-1, 1]; None when latents come from a disk cache
    labels: torch.Tensor | None  # [B, h, w] int64
    error: str | None = None  # a sample that could not be read (raised by the training process)
    skipped: list[str] | None = None  # samples that could not be read and were replaced (data.bad_samples: skip)

    def pin_memory(self) -> "SampleBatch":
        """Page-locked images (the DataLoader's pin thread calls this on CUDA): asynchronous host-to-GPU copies."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_samples(items: list[dict]) -> SampleBatch:
    """The samples of one micro-step -> SampleBatch (in the workers)."""
    requests = [s["request"] for s in items]
    errors = [s["error"] for s in items if "error" in s]
    read = not errors and "image" in items[0]
    return SampleBatch(
        micro_step=requests[0][1], indices=[r[0] for r in requests], slots=[r[2] for r in requests],
        images=torch.stack([s["image"] for s in items]) if read else None,
        labels=torch.stack([s["label"] for s in items]) if read else None,
        error=errors[0] if errors else None,
        skipped=[problem for s in items for problem in s.get("skipped", ())],
    )


class MicroStepSampler(Sampler[list[Request]]):
    """Micro-steps [start, stop): this process's requests, slots rank*B .. rank*B+B-1 of the global batch."""

    def __init__(self, num_samples: int, batch_size: int, num_processes: int, process_index: int, seed: int,
                 start: int, stop: int) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.num_processes, self.process_index = num_processes, process_index
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        global_batch = self.batch_size * self.num_processes
        slots = range(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        for m in range(self.start, self.stop):
            indices = sample_indices(self.num_samples, global_batch, m, self.seed)
            yield [(indices[s], m, s) for s in slots]


def micro_step_batches(samples: TrainingSamples, sampler: MicroStepSampler, num_workers: int = 0,
                       prefetch_factor: int = 2, pin_memory: bool = False):
    """Yields one `SampleBatch` per micro-step of `sampler`, read (and augmented) by `num_workers` workers."""
    loader = DataLoader(
        samples, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_samples, pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers else None,
    )
    for batch in loader:
        if batch.error:
            raise DataError(batch.error)
        yield batch


@dataclass
class TrainingData:
    """What the trainer reads: samples (read and augmented in `num_workers` DataLoader workers) and the
    batcher that turns them into latents on the model's device."""

    samples: TrainingSamples
    batcher: LatentBatcher
    num_workers: int = 0
    prefetch_factor: int = 2
    check: DataCheck | None = None  # the data check the samples passed (None: generated data, not checked)

    @property
    def crop_size(self) -> tuple[int, int]:
        return self.samples.augmentation.crop_size

    def micro_steps(self, start: int, stop: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                    seed: int = 0, pin_memory: bool = False) -> Iterator[SampleBatch]:
        """This process's samples of micro-steps [start, stop), in order."""
        sampler = MicroStepSampler(len(self.samples), batch_size, num_processes, process_index, seed, start, stop)
        return micro_step_batches(self.samples, sampler, self.num_workers, self.prefetch_factor, pin_memory)
