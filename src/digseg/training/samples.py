"""The data stage of training: which samples each micro-step reads, and reading + augmenting them in workers.

The trainer asks for micro-steps in order; `MicroStepSampler` yields, for each, this process's sample
requests `(index, micro_step, slot)` (`slot` = the sample's place in the global batch, see batches.py).
`TrainingSamples` turns a request into a sample: read and decode the image and label, then augment them with
the generator of (seed, micro_step, slot) (its own stream, apart from the query/noise/timestep generator of
the same slot). A sample therefore depends on nothing but its request: not on the worker that made it, the
number of workers, the process split, or where a run was resumed. A torch `DataLoader` runs this in
`num_workers` processes, prefetching, while the training process encodes latents on its device.

One DataLoader spans the whole run (all remaining micro-steps are one pass of its sampler), so its workers
live as long as the run: persistent by construction.

A sample that cannot be read does not raise inside the worker (where PyTorch would wrap the error in a
multi-line traceback): it comes back as an error record, and `collate_samples`' caller raises the usual
one-line `DataError` naming the file in the training process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.augment import Augmentation, apply_augmentation
from ..errors import DataError, DigsegError
from ..seeding import seeded_generator
from .batches import sample_indices

AUGMENT_STREAM = 1  # 4th seeding key: a slot's augmentation draws, apart from its query/noise/timestep draws

Request = tuple[int, int, int]  # (sample index, micro-step, slot in the global batch)


def augmentation_generator(seed: int, micro_step: int, slot: int) -> torch.Generator:
    """The generator of one slot's augmentation draws (CPU)."""
    return seeded_generator(seed, micro_step, slot, AUGMENT_STREAM)


def read_pair(dataset: Dataset, index: int) -> tuple[Image.Image, np.ndarray]:
    """Native-size (RGB PIL image, int64 label [H, W]) of sample `index`; DataError naming the file if unreadable."""
    if hasattr(dataset, "load_pair"):
        return dataset.load_pair(index)
    sample = dataset[index]  # a plain dataset of {"image": [3, H, W] in [-1, 1], "label": [H, W]} items
    pixels = ((sample["image"].float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy()), sample["label"].numpy().astype(np.int64)


class TrainingSamples(Dataset):
    """Request (index, micro_step, slot) -> {"image": float [3, h, w] in [-1, 1], "label": int64 [h, w]} at the
    training crop (h, w), or {"error": "one line"}; with `read=False`, {} (latents come from a cache, and the
    batcher reads a sample itself only when its latents are missing)."""

    def __init__(self, dataset: Dataset, augmentation: Augmentation, seed: int, ignore_index: int = 255,
                 read: bool = True) -> None:
        self.dataset, self.augmentation, self.seed = dataset, augmentation, seed
        self.ignore_index, self.read = ignore_index, read

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int, micro_step: int, slot: int) -> dict:
        image, label = read_pair(self.dataset, index)
        gen = augmentation_generator(self.seed, micro_step, slot)
        pixels, label = apply_augmentation(image, label, self.augmentation, gen, self.ignore_index)
        return {"image": pixels, "label": label}

    def __getitem__(self, request: Request) -> dict:
        if not self.read:
            return {}
        try:
            return self.sample(*request)
        except (DigsegError, OSError, ValueError) as exc:  # DataError names the file; the others come from PIL
            return {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


@dataclass
class SampleBatch:
    """One micro-step's samples on this process."""

    micro_step: int
    indices: list[int]
    slots: list[int]
    images: torch.Tensor | None  # [B, 3, h, w] in [-1, 1]; None when latents come from a disk cache
    labels: torch.Tensor | None  # [B, h, w] int64

    def pin_memory(self) -> "SampleBatch":
        """Page-locked images (faster, asynchronous host-to-GPU transfer; labels stay on the CPU)."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_samples(items: list[tuple[Request, dict]]) -> SampleBatch:
    """[(request, sample)] of one micro-step -> SampleBatch; DataError (one line) if any sample failed."""
    for _, sample in items:
        if "error" in sample:
            raise DataError(sample["error"])
    requests = [r for r, _ in items]
    samples = [s for _, s in items]
    read = bool(samples and samples[0])
    return SampleBatch(
        micro_step=requests[0][1], indices=[r[0] for r in requests], slots=[r[2] for r in requests],
        images=torch.stack([s["image"] for s in samples]) if read else None,
        labels=torch.stack([s["label"] for s in samples]) if read else None,
    )


class _WithRequest(Dataset):
    """Returns (request, sample): the collate function needs both."""

    def __init__(self, samples: TrainingSamples) -> None:
        self.samples = samples

    def __getitem__(self, request: Request) -> tuple[Request, dict]:
        return request, self.samples[request]


def _keep_items(items: list[tuple[Request, dict]]) -> list[tuple[Request, dict]]:
    return items  # collated in the training process, where a failed sample's error is raised


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
        _WithRequest(samples), batch_sampler=sampler, num_workers=num_workers, collate_fn=_keep_items,
        pin_memory=False, prefetch_factor=prefetch_factor if num_workers else None,
        persistent_workers=False,  # one pass spans the run: the workers already live as long as it
    )
    for items in loader:
        batch = collate_samples(items)
        yield batch.pin_memory() if pin_memory else batch
