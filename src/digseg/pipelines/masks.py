"""Label maps rendered as RGB images in [-1, 1] for the VAE (`MaskCodec.encode`) and decoded images read back into
per-class probabilities (`MaskCodec.decode`): "binary" (black / white) or "palette" (K >= 2 colours of `make_palette`).
Pixels equal to `ignore_index` are rendered mid grey (0) and masked out of the loss (`MaskCodec.ignore_weights`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .common import make_palette  # noqa: F401  (re-exported)

_MAX_SQ_DIST = 12.0  # largest squared distance between two points of [-1, 1]^3


class MaskCodec:
    """Label map <-> RGB image in [-1, 1]; batched, on the input's device. `num_classes`: K (ignore excluded);
    `temperature`: palette softness, logits are ``-||x - c_k||^2 / (temperature * 12)``."""

    def __init__(self, mode: str = "binary", num_classes: int = 2, ignore_index: int = 255,
                 temperature: float = 0.05) -> None:
        if mode not in ("binary", "palette"):
            raise ValueError(f"mode must be 'binary' or 'palette', got {mode!r}")
        num_classes = int(num_classes)
        if mode == "binary" and num_classes != 2:
            raise ValueError(f"binary mode needs num_classes == 2, got {num_classes}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if 0 <= int(ignore_index) < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id in [0, {num_classes}); "
                             "use a value outside that range (e.g. 65535)")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.mode, self.num_classes, self.temperature = mode, num_classes, float(temperature)
        self.ignore_index = int(ignore_index)
        colours = torch.from_numpy(make_palette(num_classes).astype(np.float32))
        self.palette: torch.Tensor = colours / 127.5 - 1.0  # [K, 3] in [-1, 1]

    def _check_labels(self, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Validate and return int64 labels ``[B, H, W]`` (``[H, W]`` gets a batch dim)."""
        if isinstance(labels, np.ndarray):  # copied: any strides, read-only arrays too
            labels = torch.from_numpy(labels.astype(np.int64))
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.dim() == 2:
            labels = labels.unsqueeze(0)
        if labels.dim() != 3:
            raise ValueError(f"labels must be [B, H, W] or [H, W], got shape {tuple(labels.shape)}")
        labels = labels.long()
        bad = ((labels < 0) | (labels >= self.num_classes)) & (labels != self.ignore_index)
        if bool(bad.any()):
            values = torch.unique(labels[bad]).tolist()
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise ValueError(f"label values out of range [0, {self.num_classes}) and not ignore_index "
                             f"({self.ignore_index}): {shown}")
        return labels

    def encode(self, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Labels [B, H, W] (or [H, W]) -> image [B, 3, H, W] float32 in [-1, 1]; ignore pixels -> 0."""
        labels = self._check_labels(labels)  # [B, H, W]
        ignore = labels == self.ignore_index  # [B, H, W]
        image = self.palette.to(labels.device)[labels.masked_fill(ignore, 0)]  # [B, H, W, 3]
        image = image.masked_fill(ignore.unsqueeze(-1), 0.0)
        return image.permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` (float32, differentiable) = ``-||x - c_k||^2 / (T * 12)`` up to a per-pixel
        constant: ``2 x.c - ||c||^2``, without building ``[B, K, 3, H, W]``."""
        x = images.float()
        c = self.palette.to(device=x.device)  # [K, 3]
        logits = 2.0 * torch.einsum("bchw,kc->bkhw", x, c)  # [B, K, H, W]
        logits.sub_((c * c).sum(dim=1).view(1, -1, 1, 1))
        return logits.mul_(1.0 / (self.temperature * _MAX_SQ_DIST))

    def decode(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded images ``[B, 3, H, W]`` -> probabilities ``[B, K, H, W]``, float32 (fp16 would tie neighbouring
        colours for large K). Binary: ``p_fg = clamp((mean_c x + 1) / 2, 0, 1)``; palette: softmax of `logits`."""
        images = images.unsqueeze(0) if images.dim() == 3 else images
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if self.mode == "binary":
            p_fg = ((images.float().mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)
            return torch.cat([1.0 - p_fg, p_fg], dim=1)  # [B, 2, H, W]
        logits = self.logits(images)  # [B, K, H, W]
        logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()  # in-place softmax: one [B, K, H, W] buffer
        return logits.div_(logits.sum(dim=1, keepdim=True))

    def ignore_weights(self, labels: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """Loss weights at latent resolution: labels ``[B, H, W]`` -> float32 ``[B, 1, h, w]``, 1 where the latent
        cell covers no ignore pixel, 0 where it covers any (adaptive max-pool of the ignore indicator)."""
        ignore = (labels == self.ignore_index).float().unsqueeze(1)  # [B, 1, H, W]
        return 1.0 - F.adaptive_max_pool2d(ignore, tuple(latent_size))  # [B, 1, h, w]
