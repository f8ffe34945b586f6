"""`digseg cache-latents`: the frozen VAE's latents of a dataset, written once, read by the trainer. A folder of
index.json (class names, resolution, VAE fingerprint; per sample its shard and present classes) and
shard-00000.safetensors files of latents [4, h, w] (`tensor_name`) and keep masks "<i>.keep" [1, h, w]."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import DataError, DigsegError
from .batches import LatentBatcher, LatentKey

INDEX = "index.json"


def tensor_name(index: int, key: LatentKey) -> str:
    """The shard tensor of sample `index`'s latent `key`: "<i>.image", "<i>.palette", "<i>.class<c>", "<i>.empty"."""
    return f"{index}.class{key.class_id}" if key.kind == "class" else f"{index}.{key.kind}"


def vae_fingerprint(vae) -> str:
    """A short hash of the VAE's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]


@torch.no_grad()
def build_latent_cache(dataset: Dataset, class_names: list[str], vae, out_dir: str | Path, resolution: int,
                       task: str = "both", shard_size: int = 256, show_progress: bool = True) -> Path:
    """Encode every sample once; samples that cannot be read are reported in index.json and left out."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batcher = LatentBatcher(dataset, class_names, vae, task, "{}", 0.0, cache=False,
                            ignore_index=getattr(dataset, "ignore_index", 255))
    samples: dict[str, dict] = {}
    skipped: list[str] = []
    shard: dict[str, torch.Tensor] = {}
    shard_id = 0
    for i in tqdm(range(len(dataset)), desc="cache latents", disable=not show_progress):
        try:
            entry = batcher.encode_all(i)
        except DataError as exc:
            skipped.append(str(exc))
            continue
        for key, value in entry["latents"].items():
            shard[tensor_name(i, key)] = value.contiguous()
        shard[f"{i}.keep"] = entry["keep"].contiguous()
        samples[str(i)] = {"shard": shard_id, "present": entry["present"]}
        if len(samples) % shard_size == 0:
            save_file(shard, str(out / f"shard-{shard_id:05d}.safetensors"))
            shard, shard_id = {}, shard_id + 1
    if shard:
        save_file(shard, str(out / f"shard-{shard_id:05d}.safetensors"))
    index = {"class_names": list(class_names), "resolution": resolution, "task": task,
             "vae": vae_fingerprint(vae), "num_samples": len(dataset), "samples": samples, "skipped": skipped}
    (out / INDEX).write_text(json.dumps(index))
    return out


class LatentCache:
    """Read side: `get(i, key)` -> latent `key` [4, h, w] of sample i (None if absent), `info(i)` -> (present, keep)."""

    def __init__(self, path: str | Path, class_names: list[str], vae, resolution: int) -> None:
        self.path = Path(path)
        if not (self.path / INDEX).is_file():
            raise DigsegError(f"not a latent cache: {self.path} ({INDEX} missing; build one with `digseg "
                              "cache-latents`)")
        self.index = json.loads((self.path / INDEX).read_text())
        if self.index["class_names"] != list(class_names):
            raise DigsegError(f"latent cache {self.path} was built for other classes")
        if self.index["resolution"] != resolution:
            raise DigsegError(f"latent cache {self.path} is at resolution {self.index['resolution']}, training uses "
                              f"{resolution}")
        if self.index["vae"] != vae_fingerprint(vae):
            raise DigsegError(f"latent cache {self.path} was built with another VAE")
        self._handles: dict[int, object] = {}

    def has(self, i: int) -> bool:
        return str(i) in self.index["samples"]

    def _tensor(self, i: int, name: str) -> torch.Tensor | None:
        if not self.has(i):
            return None
        shard = self.index["samples"][str(i)]["shard"]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.path / f"shard-{shard:05d}.safetensors"), framework="pt")
        handle = self._handles[shard]
        return handle.get_tensor(name) if name in handle.keys() else None

    def get(self, i: int, key: LatentKey) -> torch.Tensor | None:
        return self._tensor(i, tensor_name(i, key))

    def info(self, i: int) -> tuple[list[int], torch.Tensor]:
        return self.index["samples"][str(i)]["present"], self._tensor(i, f"{i}.keep")
