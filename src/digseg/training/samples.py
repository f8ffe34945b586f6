"""The data stage of training: `MicroStepSampler` yields this process's requests `(index, micro_step, slot)` (`slot`:
the place in the global batch), `TrainingSamples` reads and augments one with the generator of (seed, micro_step,
slot), so a sample depends on its request alone. One DataLoader spans the run. An unreadable sample's error travels
in its batch, raised in the training process as a one-line `DataError`; with `skip_bad` it is replaced by the next
readable one in dataset order (the same on every run, so resume stays exact)."""

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

Request = tuple[int, int, int]  # (sample index, micro-step, slot in the global batch)


def augmentation_generator(seed: int, micro_step: int, slot: int) -> torch.Generator:
    return seeded_generator(seed, micro_step, slot, 1)  # 4th key: apart from the slot's query/noise/timestep draws


class TrainingSamples(Dataset):
    """Request -> {"request" (of the sample read), "image": float [3, h, w] in [-1, 1], "label": int64 [h, w],
    "skipped": [problems of unreadable samples replaced]} or {"request", "error"}; with `read=False`, {"request"}."""

    def __init__(self, dataset: Dataset, augmentation: Augmentation, seed: int, ignore_index: int = 255,
                 read: bool = True, skip_bad: bool = False) -> None:
        if not hasattr(dataset, "load_pair"):
            raise ConfigError(f"{type(dataset).__name__} has no load_pair(i) -> (RGB image, label): training "
                              "reads native samples to augment them")
        self.dataset, self.augmentation, self.seed = dataset, augmentation, seed
        self.ignore_index, self.read, self.skip_bad = ignore_index, read, skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, request: Request) -> dict:
        if not self.read:
            return {"request": request}
        index, micro_step, slot = request
        skipped: list[str] = []
        for offset in range(len(self) if self.skip_bad else 1):
            i = (index + offset) % len(self)
            try:
                image, label = self.dataset.load_pair(i)  # DataError naming the file when unreadable
                gen = augmentation_generator(self.seed, micro_step, slot)
                image, label = apply_augmentation(image, label, self.augmentation, gen, self.ignore_index)
                return {"request": (i, micro_step, slot), "image": image, "label": label, "skipped": skipped}
            except (DigsegError, OSError, ValueError) as exc:  # DataError names the file; the others come from PIL
                skipped.append(first_line(exc))
        return {"request": request, "error": skipped[0] if len(skipped) == 1 else
                f"none of the {len(self)} samples can be read (first: {skipped[0]})"}


@dataclass
class SampleBatch:
    micro_step: int
    indices: list[int]
    slots: list[int]
    images: torch.Tensor | None  # [B, 3, h, w] in [-1, 1]; None when latents come from a disk cache
    labels: torch.Tensor | None  # [B, h, w] int64
    error: str | None = None  # a sample that could not be read (raised by the training process)
    skipped: list[str] | None = None  # samples that could not be read and were replaced (data.bad_samples: skip)

    def pin_memory(self) -> "SampleBatch":
        """Page-locked images (the DataLoader's pin thread calls this on CUDA)."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_samples(items: list[dict]) -> SampleBatch:
    requests = [s["request"] for s in items]
    errors = [s["error"] for s in items if "error" in s]
    read = not errors and "image" in items[0]
    return SampleBatch(requests[0][1], [r[0] for r in requests], [r[2] for r in requests],
                       images=torch.stack([s["image"] for s in items]) if read else None,
                       labels=torch.stack([s["label"] for s in items]) if read else None,
                       error=errors[0] if errors else None,
                       skipped=[problem for s in items for problem in s.get("skipped", ())])


class MicroStepSampler(Sampler[list[Request]]):
    """Micro-steps [start, stop): this process's requests, slots rank*B .. rank*B+B-1 of the global batch."""

    def __init__(self, num_samples: int, batch_size: int, num_processes: int, process_index: int, seed: int,
                 start: int, stop: int) -> None:
        self.num_samples, self.batch_size, self.seed, self.start, self.stop = num_samples, batch_size, seed, start, stop
        self.num_processes, self.process_index = num_processes, process_index

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        global_batch = self.batch_size * self.num_processes
        slots = range(self.process_index * self.batch_size, (self.process_index + 1) * self.batch_size)
        for m in range(self.start, self.stop):
            indices = sample_indices(self.num_samples, global_batch, m, self.seed)
            yield [(indices[s], m, s) for s in slots]


@dataclass
class TrainingData:
    """What the trainer reads: samples (read and augmented in DataLoader workers) and the batcher (-> latents)."""

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
        """This process's samples of micro-steps [start, stop), in order, read (and augmented) by the workers."""
        sampler = MicroStepSampler(len(self.samples), batch_size, num_processes, process_index, seed, start, stop)
        for batch in DataLoader(self.samples, batch_sampler=sampler, num_workers=self.num_workers,
                                collate_fn=collate_samples, pin_memory=pin_memory,
                                prefetch_factor=self.prefetch_factor if self.num_workers else None):
            if batch.error:
                raise DataError(batch.error)
            yield batch
