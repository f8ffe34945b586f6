"""Training a `LightMaskDecoder` (`digseg train-mask-decoder`; docs/mask_decoder.md) to invert the frozen VAE's mask
latents, to the rendered mask (`target="mask"`) or the VAE decoder's output (`target="vae"`); each latent gets noise
of a std drawn from [0, latent_noise], since the U-Net's latents are not exactly the encoder's."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..errors import DataError, DigsegError
from ..models.digseg_model import decode_latents
from ..models.mask_decoder import LightMaskDecoder
from .config import MASK_DECODER_STEPS, MASK_DECODER_TARGETS
from .batches import IMAGE, LatentBatcher, LatentKey


@dataclass
class MaskLatents:
    latents: torch.Tensor  # [N, C, h, w] float32, the VAE's scaled posterior means
    labels: torch.Tensor  # [S, H, W] int64, each sample's label map
    sample: torch.Tensor  # [N] int64, index into labels
    keys: list[LatentKey]  # [N] PALETTE | LatentKey.of_class(c) | EMPTY: which rendering of the label map
    skipped: list[str]  # samples that could not be read, with the reason

    def __len__(self) -> int:
        return len(self.keys)


@torch.no_grad()
def collect_mask_latents(batcher: LatentBatcher, indices: list[int] | range, store=None,
                         show_progress: bool = True) -> MaskLatents:
    """The mask latents of the given samples: read from `store` (a `LatentCache`) where it has them, else encoded."""
    latents, labels, sample, keys, skipped = [], [], [], [], []
    for i in tqdm(indices, desc="mask latents", disable=not show_progress):
        try:
            if store is not None and store.has(i):
                label = batcher.dataset[i]["label"]  # [H, W]: the targets are rendered from it
                present, _ = store.info(i)
                found = {key: z for key in batcher.mask_keys(present) if (z := store.get(i, key)) is not None}
            else:  # one read of the sample: encode_all returns its label too
                entry = batcher.encode_all(i)
                found, label = entry["latents"], entry["label"]
                found.pop(IMAGE)
        except (DataError, OSError, ValueError) as exc:
            skipped.append(f"sample {i}: {exc}")
            continue
        latents += [z.float() for z in found.values()]
        sample += [len(labels)] * len(found)
        keys += list(found)
        labels.append(label.long())
    if not latents:
        raise DigsegError(f"no mask latents: none of {len(indices)} samples could be read" +
                          (f" (first: {skipped[0]})" if skipped else ""))
    return MaskLatents(torch.stack(latents), torch.stack(labels), torch.tensor(sample), keys, skipped)


def fit_light_mask_decoder(pipe, dataset, resolution: int, task: str = "both", latent_cache: str | None = None,
                           num_samples: int | None = None, block_channels=None, steps: int = MASK_DECODER_STEPS,
                           batch_size: int = 32, learning_rate: float = 1e-3, latent_noise: float = 0.2,
                           target: str = "mask", seed: int = 0, show_progress: bool = True):
    """Train a `LightMaskDecoder` (`block_channels`: its widths; AdamW, cosine decay) on `dataset`'s mask latents and
    install it in `pipe` (in the pipe's dtype). -> (decoder in fp32, the loss of every step, data)."""
    from .latent_cache import LatentCache

    if target not in MASK_DECODER_TARGETS:
        raise DigsegError(f"target must be one of {', '.join(MASK_DECODER_TARGETS)}, got {target!r}")
    if steps < 1 or batch_size < 1:
        raise DigsegError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    names = list(pipe.config.class_names or dataset.class_names)
    if len(names) != len(dataset.class_names):
        raise DigsegError(f"the model has {len(names)} classes but the dataset has {len(dataset.class_names)}")
    batcher = LatentBatcher(dataset, names, pipe.vae, task, "{}", 0.0, cache=False,
                            ignore_index=getattr(dataset, "ignore_index", 255))
    store = LatentCache(latent_cache, names, pipe.vae, resolution) if latent_cache else None
    n = len(dataset) if num_samples is None else min(num_samples, len(dataset))
    data = collect_mask_latents(batcher, range(n), store, show_progress=show_progress)
    try:
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on `seed` alone
            torch.manual_seed(seed)
            decoder = LightMaskDecoder.for_vae(pipe.vae, block_channels).to(pipe.device)
    except ValueError as exc:
        raise DigsegError(f"light mask decoder: {exc}") from exc
    device, vae = decoder.device, pipe.vae
    decoder.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="train mask decoder", disable=not show_progress)
    for step in bar:
        pick = torch.randint(len(data), (batch_size,), generator=gen)  # [B]
        z = data.latents[pick]  # [B, C, h, w]
        sigma = torch.rand(batch_size, 1, 1, 1, generator=gen) * latent_noise
        z = z + sigma * torch.randn(z.shape, generator=gen)
        label = data.labels[data.sample[pick]]  # [B, H, W]
        if target == "vae":
            with torch.no_grad():
                goal = decode_latents(vae, z.to(vae.device)).float()  # [B, 3, H, W]
        else:
            goal = torch.stack([batcher.target_image(lab, data.keys[int(j)]) for lab, j in zip(label, pick)])
        weight = (label != batcher.ignore_index).unsqueeze(1).float()  # [B, 1, H, W]
        pred = decoder(z.to(device))  # [B, 3, H, W]
        err = (pred - goal.to(device)).pow(2) * weight.to(device)
        loss = err.sum() / (weight.sum().to(device) * 3).clamp(min=1)
        if not torch.isfinite(loss):
            raise DigsegError(f"mask decoder training: loss is {loss.item()} at step {step}; lower --learning-rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    decoder.eval().requires_grad_(False)
    same_dtype = decoder.dtype == pipe.unet.dtype
    pipe.set_mask_decoder(decoder if same_dtype else copy.deepcopy(decoder))  # a copy takes a bf16/fp16 pipe's dtype
    return decoder, losses, data
