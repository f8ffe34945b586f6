"""The PyTorch pipeline's non-network steps in numpy (float32), each reproducing the torch code it names: `resize`
is `F.interpolate(mode="bilinear", align_corners=False)` with or without `antialias` (PIL's triangle filter widened
when shrinking), as separable weight matrices; `cut_views` / `combine_views`: `sliding`; `ddim_step`: diffusers'
`DDIMScheduler.step` (eta 0); `combine_members`, `decode_codec`, `native_outputs`: their torch namesakes."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def resize_weights(size_in: int, size_out: int, antialias: bool) -> np.ndarray:
    """[size_out, size_in] float32 interpolation weights along one axis (align_corners=False)."""
    scale = size_in / size_out
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    if antialias and scale > 1.0:  # torch's _upsample_bilinear2d_aa (PIL's ImagingResample)
        for i in range(size_out):  # support = scale
            center = scale * (i + 0.5)
            lo = max(int(center - scale + 0.5), 0)
            hi = min(int(center + scale + 0.5), size_in)
            w = np.clip(1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / scale), 0.0, None)
            weights[i, lo:hi] = w / w.sum()
        return weights.astype(np.float32)
    rows = np.arange(size_out)  # plain bilinear (what antialias gives too when enlarging)
    src = np.maximum((rows + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    np.add.at(weights, (rows, i0), 1.0 - (src - i0))
    np.add.at(weights, (rows, np.minimum(i0 + 1, size_in - 1)), src - i0)
    return weights.astype(np.float32)


def resize(array: np.ndarray, size: tuple[int, int], antialias: bool = False) -> np.ndarray:
    """[..., H, W] -> [..., *size] bilinear (unchanged when the size already matches)."""
    h, w = array.shape[-2:]
    if (h, w) == tuple(size):
        return array
    wh = resize_weights(h, int(size[0]), antialias)  # [H', H]
    ww = resize_weights(w, int(size[1]), antialias)  # [W', W]
    return np.matmul(wh, np.matmul(array.astype(np.float32, copy=False), ww.T)).astype(np.float32, copy=False)


def cut_views(image: np.ndarray, boxes: list[tuple[int, int, int, int]], global_view: bool, flip: bool,
              multiple: int) -> np.ndarray:
    """image [3, H, W] -> views [V, 3, h', w']: the windows, the global view, then with `flip` the mirrored ones,
    padded to multiples of `multiple` (replicated border, bottom and right)."""
    window = (boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2])

    def cut(picture: np.ndarray) -> list[np.ndarray]:
        views = [picture[:, a:b, c:d] for a, b, c, d in boxes]
        return views + [resize(picture, window, antialias=True)] if global_view else views

    views = np.stack(cut(image) + (cut(image[:, :, ::-1]) if flip else []))  # [V, 3, h, w]
    pad = ((0, 0), (0, 0), (0, -window[0] % multiple), (0, -window[1] % multiple))
    return np.pad(views, pad, mode="edge") if pad[2][1] or pad[3][1] else views  # no copy when none is needed


def combine_views(probs: np.ndarray, boxes: list[tuple[int, int, int, int]], size: tuple[int, int],
                  global_view: bool = False, flip: bool = False) -> np.ndarray:
    """The views' probabilities [V, K, h', w'] (padded, in `cut_views`' order) -> [K, *size]."""
    if flip:
        plain, mirrored = np.split(probs, 2)
        return (combine_views(plain, boxes, size, global_view)
                + combine_views(mirrored, boxes, size, global_view)[..., ::-1]) / 2
    probs = probs[:, :, : boxes[0][1] - boxes[0][0], : boxes[0][3] - boxes[0][2]]  # padding removed
    total = np.zeros((probs.shape[1], *size), dtype=np.float32)
    count = np.zeros(size, dtype=np.float32)
    for window, (y1, y2, x1, x2) in zip(probs, boxes):
        total[:, y1:y2, x1:x2] += window
        count[y1:y2, x1:x2] += 1
    total /= count  # window_grid leaves no pixel uncovered
    return (total + resize(probs[-1], size)) / 2 if global_view else total


def predicted_sample(pred: np.ndarray, z_t: np.ndarray, alpha: float, kind: str) -> np.ndarray:
    """The U-Net's prediction read as the clean latent z0, whatever the prediction type."""
    if kind == "sample":
        return pred
    a = np.float32(alpha)
    if kind == "epsilon":
        return (z_t - np.sqrt(1 - a) * pred) / np.sqrt(a)
    return np.sqrt(a) * z_t - np.sqrt(1 - a) * pred  # v-prediction


def ddim_step(pred: np.ndarray, t: int, latents: np.ndarray, scheduler: dict, steps: int) -> np.ndarray:
    """One deterministic DDIM step (eta = 0) from timestep t with `steps` steps in all: diffusers' formula."""
    alphas = scheduler["_alphas"]  # float32 [T]
    prev_t = t - scheduler["num_train_timesteps"] // steps
    alpha_prev = alphas[prev_t] if prev_t >= 0 else np.float32(scheduler["final_alpha_cumprod"])
    half = np.float32(0.5)
    a, b = alphas[t] ** half, (np.float32(1) - alphas[t]) ** half  # sqrt(alpha_t), sqrt(1 - alpha_t)
    kind = scheduler["prediction_type"]
    if kind == "epsilon":
        x0, eps = (latents - b * pred) / a, pred
    elif kind == "sample":
        x0, eps = pred, (latents - a * pred) / b
    else:  # v_prediction
        x0, eps = a * latents - b * pred, a * pred + b * latents
    return (alpha_prev ** half * x0 + (np.float32(1) - alpha_prev) ** half * eps).astype(np.float32)


def combine_members(latents: np.ndarray, how: str) -> np.ndarray:
    """[n, E, C, h, w] -> [n, C, h, w]: element-wise median (mean of the two middle values) or mean."""
    if how == "mean":
        return latents.mean(axis=1)
    ordered = np.sort(latents, axis=1)
    e = latents.shape[1]
    return (ordered[:, (e - 1) // 2] + ordered[:, e // 2]) / 2


def decode_codec(images: np.ndarray, palette: np.ndarray | None, temperature: float) -> np.ndarray:
    """Decoded mask images [B, 3, H, W] -> probabilities [B, K, H, W], or without `palette` the foreground's
    [B, 1, H, W]."""
    x = images.astype(np.float32, copy=False)
    if palette is None:
        return np.clip((x.mean(axis=1, keepdims=True) + 1.0) / 2.0, 0.0, 1.0)
    c = palette.astype(np.float32) / np.float32(127.5) - np.float32(1.0)  # [K, 3] in [-1, 1]
    logits = 2.0 * np.einsum("bchw,kc->bkhw", x, c)
    logits -= (c * c).sum(axis=1).reshape(1, -1, 1, 1)
    logits *= np.float32(1.0 / (temperature * 12.0))
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def best_classes(labels: np.ndarray, probs: np.ndarray, count: int) -> np.ndarray:
    """The `count` classes with most pixels (ties: higher peak probability), ascending ids."""
    k = probs.shape[0]
    pixels = np.bincount(labels[labels < k].reshape(-1), minlength=k).astype(np.float64)
    peak = np.clip(probs.reshape(k, -1).max(axis=1).astype(np.float64), 0, 1)
    return np.sort(np.argsort(-(pixels + peak / 2), kind="stable")[:count])


def native_outputs(probs: np.ndarray, size: tuple[int, int], mode: str, settings):
    """One image's probabilities [K, h, w] -> at `size`: (labels [H, W] int64, probabilities [n, H, W], ids [n]);
    the call's `settings`: threshold, no_class_threshold, max_probability_classes."""
    k, keep = probs.shape[0], settings.max_probability_classes
    full = resize(probs, size)  # [K, H, W]
    if mode == "binary":
        return (full[1] > settings.threshold).astype(np.int64), full, np.arange(k)
    labels = full.argmax(axis=0).astype(np.int64)
    if mode == "per_class" and settings.no_class_threshold is not None:
        labels[full.max(axis=0) < settings.no_class_threshold] = 255
    ids = np.arange(k) if keep is None or keep >= k else best_classes(labels, probs, keep)
    return labels, full[ids], ids
