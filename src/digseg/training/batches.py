"""Deterministic training batches: which samples, which query, and the frozen VAE's latents.

Micro-step m's sample order is drawn from (seed, epoch), each sample's query, noise and timestep from a generator of
(seed, m, slot), slot being its place in the global batch: a resumed run continues exactly with no RNG state saved,
and N processes with batch B draw what one with batch N*B draws. A `palette` query renders all classes; a `binary`
one picks a class (present, or with `negative_prob` an absent one: an empty mask) and one of its synonyms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from ..pipelines.masks import MaskCodec
from ..models.digseg_model import encode_latents
from ..pipelines.prompts import is_background, palette_prompt, synonyms
from ..seeding import seeded_generator

@dataclass(frozen=True)
class LatentKey:
    """One of a sample's latents: `IMAGE`, `PALETTE`, `LatentKey.of_class(c)` or `EMPTY` (shared by absent classes)."""

    kind: str  # "image", "palette" (all classes rendered), "class" (one class's binary mask) or "empty"
    class_id: int | None = None  # the class of kind "class"; None for the others

    @classmethod
    def of_class(cls, class_id: int) -> LatentKey:
        return cls("class", int(class_id))


IMAGE = LatentKey("image")
PALETTE = LatentKey("palette")
EMPTY = LatentKey("empty")


def step_generator(seed: int, step: int, slot: int = 0) -> torch.Generator:
    """The (CPU) generator of one sample slot of micro-step `step`."""
    return seeded_generator(seed, step, slot)


def slot_generators(seed: int, step: int, slots: range | list[int]) -> list[torch.Generator]:
    return [step_generator(seed, step, slot) for slot in slots]


def per_sample(gen: torch.Generator | list[torch.Generator], n: int) -> list[torch.Generator]:
    """n generators: `gen` itself if it is a list (of n), else n times the same one."""
    return [gen] * n if isinstance(gen, torch.Generator) else list(gen)


def sample_indices(num_samples: int, global_batch: int, micro_step: int, seed: int) -> list[int]:
    """Indices of micro-step `micro_step`: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    start = micro_step * global_batch
    out: list[int] = []
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), num_samples)
        perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
        out.extend(perm[offset : offset + global_batch - len(out)].tolist())
    return out


@dataclass
class Batch:
    image_latents: torch.Tensor  # [B, 4, h, w]
    mask_latents: torch.Tensor | None  # [B, 4, h, w]; None with label targets (the one-step objective)
    keep: torch.Tensor  # [B, 1, h, w], 0 where the latent cell covers an "ignore" pixel
    prompts: list[str]
    targets: torch.Tensor | None = None  # [B, H, W] int64 labels of each query (ignore kept); label targets only
    palette: list[bool] | None = None  # [B] which samples are palette queries (else binary); label targets only


class LatentBatcher:
    """Builds `Batch`es from a dataset, encoding images and masks with the frozen VAE."""

    def __init__(self, dataset: Dataset, class_names: list[str], vae, task: str, prompt_template: str,
                 negative_prob: float, cache: bool, ignore_index: int = 255, store=None,
                 fixed_samples: bool = True, cache_max_mib: float = 2048, label_targets: bool = False) -> None:
        """`fixed_samples`: sample i is the same at every step (no augmentation), so its latents, present classes
        and loss weights may be kept (`cache`: in memory up to `cache_max_mib`; `store`: a `LatentCache` on disk).
        `label_targets`: batches carry each query's label map (`Batch.targets`) instead of its mask latents."""
        self.dataset, self.class_names, self.vae, self.store = dataset, class_names, vae, store
        self.task, self.prompt_template, self.negative_prob = task, prompt_template, negative_prob
        self.fixed_samples, self.label_targets, self.ignore_index = fixed_samples, label_targets, ignore_index
        self.cache_enabled = cache and fixed_samples
        self.cache_max_bytes = int(cache_max_mib * 2**20)
        self.cache_bytes = 0  # bytes held by _latents and the keep masks in _info
        self.palette_prompt = palette_prompt(class_names)  # as the pipeline asks at inference
        self.binary_codec = MaskCodec("binary", ignore_index=ignore_index)
        self.palette_codec = MaskCodec("palette", len(class_names), ignore_index=ignore_index)
        self.queryable = [c for c, n in enumerate(class_names) if not is_background(n)]
        self._latents: dict[tuple[int, LatentKey], torch.Tensor] = {}  # (index, key) -> [4, h, w]
        self._info: dict[int, tuple[list[int], torch.Tensor]] = {}  # index -> (present classes, keep [1, h, w])

    def _choose_query(self, present: list[int], gen: torch.Generator) -> tuple[LatentKey, str]:
        use_palette = self.task == "palette" or (self.task == "both" and torch.rand(1, generator=gen).item() < 0.5)
        if use_palette or not self.queryable:
            return PALETTE, self.palette_prompt
        candidates = [c for c in self.queryable if c in present]
        absent = [c for c in self.queryable if c not in present]
        if absent and (not candidates or torch.rand(1, generator=gen).item() < self.negative_prob):
            candidates = absent
        c = candidates[int(torch.randint(len(candidates), (1,), generator=gen))]
        names = synonyms(self.class_names[c])  # "wall, walls": one synonym per query, as inference averages them
        name = names[int(torch.randint(len(names), (1,), generator=gen))] if len(names) > 1 else names[0]
        key = LatentKey.of_class(c) if c in present else EMPTY  # every absent class has the same (empty) target
        return key, self.prompt_template.format(name)

    def _load(self, index: int) -> dict:
        sample = self.dataset[index]
        self._check_labels(sample["label"], f"sample {sample.get('stem', index)}")
        return sample

    def target_labels(self, label: torch.Tensor, key: LatentKey) -> torch.Tensor:
        """label [H, W] -> the query target `key`'s labels [H, W] int64: the classes (PALETTE) or 1 = the class,
        0 = not (EMPTY: all 0); ignore pixels stay ignore."""
        if key == PALETTE:
            return label.long()
        binary = (label == (-1 if key == EMPTY else key.class_id)).long()
        binary[label == self.ignore_index] = self.ignore_index
        return binary

    def target_image(self, label: torch.Tensor, key: LatentKey) -> torch.Tensor:
        """label [H, W] -> mask image [3, H, W] in [-1, 1] for the query target `key`."""
        codec = self.palette_codec if key == PALETTE else self.binary_codec
        return codec.encode(self.target_labels(label, key)[None])[0]

    def _query_batch(self, image_latents: torch.Tensor, mask_latents: torch.Tensor | None, keep: torch.Tensor,
                     keys: list[tuple[LatentKey, str]], labels: list[torch.Tensor] | None) -> Batch:
        """`keys`: (target, prompt) per sample; `labels`: [H, W] per sample."""
        targets = None
        if self.label_targets:
            targets = torch.stack([self.target_labels(lab, k) for lab, (k, _) in zip(labels, keys)])  # [B, H, W]
            targets = targets.to(image_latents.device)
        return Batch(image_latents=image_latents, mask_latents=mask_latents, keep=keep, prompts=[p for _, p in keys],
                     targets=targets, palette=[k == PALETTE for k, _ in keys] if self.label_targets else None)

    @torch.no_grad()
    def encode_all(self, index: int) -> dict:
        """All sample `index` can need: {"latents": {key: [4, h, w]}, "keep": [1, h, w], "present", "label"}."""
        sample = self._load(index)
        label = sample["label"]
        present = self.present_classes(label)
        keys = [IMAGE] + self.mask_keys(present)
        pixels = [sample["image"] if k == IMAGE else self.target_image(label, k) for k in keys]
        latents = self._encode(pixels)  # [M, 4, h, w]
        keep = self.palette_codec.ignore_weights(label[None], tuple(latents.shape[-2:]))[0]  # [1, h, w]
        return {"latents": dict(zip(keys, latents)), "keep": keep, "present": present, "label": label}

    def _encode(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """Images [3, H, W] -> their latents [M, 4, h, w], float32 on the CPU."""
        return encode_latents(self.vae, torch.stack(pixels).to(self.vae.device), channels_last=False).float().cpu()

    def mask_keys(self, present: list[int]) -> list[LatentKey]:
        """The query targets the task asks of a sample with classes `present`."""
        keys = [PALETTE] if self.task != "binary" else []
        if self.task != "palette":
            keys += [LatentKey.of_class(c) for c in self.queryable if c in present] + [EMPTY]
        return keys

    def present_classes(self, label: torch.Tensor) -> list[int]:
        """Sorted class ids in label [H, W] (ignore left out); a bincount, ~15x faster than torch.unique here."""
        counts = torch.bincount(label.flatten(), minlength=len(self.class_names))
        return [c for c in counts.nonzero().flatten().tolist() if c != self.ignore_index]

    def _check_labels(self, labels: torch.Tensor, what: str) -> None:
        bad = labels[(labels >= len(self.class_names)) & (labels != self.ignore_index)]
        if bad.numel():
            raise DataError(f"{what}: label value {int(bad[0])} is outside the {len(self.class_names)} classes "
                            f"({self.ignore_index} = ignore)")

    def _keep_in_cache(self, nbytes: int) -> bool:
        """Room for `nbytes` more in the in-memory cache? (Counted in if so.)"""
        if not self.cache_enabled or self.cache_bytes + nbytes > self.cache_max_bytes:
            return False
        self.cache_bytes += nbytes
        return True

    @torch.no_grad()
    def make_batch(self, indices: list[int], gen: torch.Generator | list[torch.Generator], read=None) -> Batch:
        """`gen`: one generator per sample (`slot_generators`), or one for all. `read`: the micro-step's
        `SampleBatch` (images and labels the data loader read); None: read here."""
        gens = per_sample(gen, len(indices))
        if not self.fixed_samples:
            return self._encode_batch(read.images, read.labels, gens)
        samples = {} if read is None or read.images is None else {
            i: {"image": read.images[j], "label": read.labels[j]} for j, i in enumerate(indices)}

        def sample(i: int) -> dict:  # read at most once per batch: from the loader's batch, else the dataset
            if i not in samples:
                samples[i] = self._load(i)
            return samples[i]

        for i in indices:
            if i not in self._info and self.store is not None and self.store.has(i):
                self._info[i] = self.store.info(i)
            if i not in self._info:
                self._info[i] = (self.present_classes(sample(i)["label"]), None)
        keys = [self._choose_query(self._info[i][0], g) for i, g in zip(indices, gens)]
        wanted = [(i, IMAGE) for i in indices]
        if not self.label_targets:
            wanted += [(i, k) for i, (k, _) in zip(indices, keys)]
        found = self._fixed_latents(wanted, sample)
        size = tuple(found[(indices[0], IMAGE)].shape[-2:])
        device = self.vae.device
        keep = torch.stack([self._keep_mask(i, sample, size) for i in indices]).to(device)  # [B, 1, h, w]
        mask_latents = None
        if not self.label_targets:
            mask_latents = torch.stack([found[(i, k)] for i, (k, _) in zip(indices, keys)]).to(device)  # [B, 4, h, w]
        labels = [sample(i)["label"] for i in indices] if self.label_targets else None
        return self._query_batch(torch.stack([found[(i, IMAGE)] for i in indices]).to(device), mask_latents, keep,
                                 keys, labels)

    def _fixed_latents(self, wanted: list[tuple[int, LatentKey]], sample) -> dict[tuple[int, LatentKey], torch.Tensor]:
        """The latents [4, h, w] of (index, key) pairs: from memory, the on-disk cache, else one VAE call."""
        missing = list(dict.fromkeys(w for w in wanted if w not in self._latents))
        found = {w: self._latents[w] for w in wanted if w in self._latents}
        for w in missing if self.store is not None else ():
            if (z := self.store.get(*w)) is not None:  # None when not stored
                found[w] = z
        missing = [w for w in missing if w not in found]
        if missing:
            pixels = [sample(i)["image"] if key == IMAGE else self.target_image(sample(i)["label"], key)
                      for i, key in missing]
            latents = self._encode(pixels)  # [M, 4, h, w]
            for w, z in zip(missing, latents):
                found[w] = z
                if self._keep_in_cache(z.numel() * z.element_size()):
                    self._latents[w] = z
        return found

    def _keep_mask(self, i: int, sample, size: tuple[int, int]) -> torch.Tensor:
        """Sample i's loss weights [1, h, w] (0 where a cell covers an ignore pixel)."""
        present, weights = self._info[i]
        if weights is None:
            weights = self.palette_codec.ignore_weights(sample(i)["label"][None], size)[0]  # [1, h, w]
            if self._keep_in_cache(weights.numel() * weights.element_size()):
                self._info[i] = (present, weights)
        return weights

    def _encode_batch(self, images: torch.Tensor, labels: torch.Tensor, gens: list[torch.Generator]) -> Batch:
        """Augmented samples: images [B, 3, h, w], labels [B, h, w] -> Batch, one VAE call."""
        self._check_labels(labels, "an augmented training sample")
        device = self.vae.device
        keys = [self._choose_query(self.present_classes(lab), g) for lab, g in zip(labels, gens)]
        # images may be pinned: copied as they are (asynchronously), then joined on the device
        pixels = images.to(device, non_blocking=True)  # [B, 3, h, w]
        if not self.label_targets:  # the rendered masks are encoded in the same VAE call
            targets = torch.stack([self.target_image(lab, k) for lab, (k, _) in zip(labels, keys)])  # [B, 3, h, w]
            pixels = torch.cat([pixels, targets.to(device)])  # [2B, 3, h, w]
        latents = encode_latents(self.vae, pixels, channels_last=False).float()  # [B or 2B, 4, h/f, w/f]
        b = len(keys)
        keep = self.palette_codec.ignore_weights(labels, tuple(latents.shape[-2:]))  # [B, 1, h/f, w/f]
        mask_latents = None if self.label_targets else latents[b:]
        return self._query_batch(latents[:b], mask_latents, keep.to(device), keys, list(labels))
