"""Reading images and label maps, with one-line `DataError`s naming the file (or a table's cell) at fault. Dataset
readers keep an image's stored pixels (`exif_transpose=False`), which label maps are aligned with."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from digseg.errors import DataError, first_line

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | os.PathLike[str]


def _open(path: PathLike, what: str) -> Image.Image:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} not found: {p}") from None
    except OSError as exc:  # a folder, no permission
        raise DataError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    return decode_image_bytes(data, f"{what} {p}")


def decode_image_bytes(data: bytes, name: str) -> Image.Image:
    """An image file's bytes fully decoded in their stored mode (truncated files fail here), else DataError."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError as exc:
        raise DataError(f"cannot read {name}: not a recognised image format") from exc
    except Exception as exc:  # PIL raises many types on corrupt input (OSError, SyntaxError, ...)
        raise DataError(f"cannot read {name}: {first_line(exc)}") from exc
    return img


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a high-bit-depth or float grey image to uint8 (values already in 0..255 are kept)."""
    is_float = arr.dtype.kind == "f"
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if is_float and hi <= 1.0 and lo >= 0.0:
        arr = arr * 255.0  # float image stored in [0, 1]
    elif lo < 0.0 or hi > 255.0:
        arr = (arr - min(lo, 0.0)) / max(hi - min(lo, 0.0), 1e-12) * 255.0  # stretch to 0..255
    return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)


def load_image(path: PathLike, exif_transpose: bool = False) -> Image.Image:
    """An image file as RGB (as viewers show it with `exif_transpose`); grey beyond 0..255 stretched to 8 bits."""
    img = _open(path, "image")
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)  # a no-op without an orientation tag
        except Exception as exc:  # a malformed EXIF block
            raise DataError(f"cannot read image {Path(path)}: bad EXIF orientation ({exc})") from exc
    return image_to_rgb(img, f"image {Path(path)}")


def image_to_rgb(img: Image.Image, name: str) -> Image.Image:
    """`img` in RGB by `load_image`'s rules for modes; DataError "cannot read <name>: ..." when it cannot be."""
    try:
        if img.mode == "RGB":
            return img
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return Image.fromarray(_to_uint8(np.asarray(img))).convert("RGB")
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning
        return img.convert("RGB")  # alpha, if any, is dropped
    except Exception as exc:
        raise DataError(f"cannot read {name}: cannot convert mode {img.mode} to RGB ({exc})") from exc


def load_label(path: PathLike, first_channel: bool = False, what: str = "label") -> np.ndarray:
    """A label map (`what`, in errors) as stored integers [H, W]: an RGB(A) one's first channel if all are equal or
    `first_channel` (JPEG noise), a float one's if every value is an integer."""
    return label_to_array(_open(path, what), f"{what} {Path(path)}", first_channel)


def label_to_array(img: Image.Image, name: str, first_channel: bool = False) -> np.ndarray:
    """A decoded label image as an integer array [H, W] by `load_label`'s rules, else DataError naming `name`."""
    mode = img.mode
    if mode in ("LA", "PA"):
        return np.array(np.asarray(img)[..., 0])  # alpha ignored
    if mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(img)[..., :3]  # [H, W, 3]
        if not first_channel and not (rgb == rgb[..., :1]).all():
            raise DataError(f"{name} must be single-channel (class ids), but it is a {mode} "
                            "image with different colour channels; save it as a grey or palette PNG")
        return np.array(rgb[..., 0])
    if mode == "1":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img)
        return arr.astype(arr.dtype.newbyteorder("="))  # a copy in native byte order
    if mode == "F":
        arr = np.asarray(img)
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{name} holds non-integer float values; labels must be class ids")
        return arr.astype(np.int32)
    raise DataError(f"{name} must be single-channel (class ids), but its mode is {mode}")


def read_list_file(path: str | os.PathLike[str], what: str, error: type[Exception] = DataError) -> list[str]:
    """A UTF-8 file's stripped lines but blank and '#' ones; `error` when it is missing, unreadable or empty."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise error(f"{what} file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} file {p}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc
    items = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not items:
        raise error(f"{what} file {p} lists nothing")
    return items


def read_class_list(path: str | os.PathLike[str]) -> list[str]:
    """A class file's names (`read_list_file`; a line's place is its class id), DataError for a name listed twice."""
    names = read_list_file(path, "class", DataError)
    if len(set(names)) < len(names):
        twice = next(name for i, name in enumerate(names) if name in names[:i])
        raise DataError(f"class file {Path(path)} lists {twice!r} twice")
    return names


def image_to_tensor(image: np.ndarray | Image.Image) -> torch.Tensor:
    """uint8 [H, W, 3] (or an RGB PIL image) -> float32 [3, H, W] in [-1, 1], in one strided copy."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # a copy: the input may be read-only
    return pixels.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format).div_(127.5).sub_(1.0)


def tensor_to_image(image: torch.Tensor) -> np.ndarray:
    """float [3, H, W] in [-1, 1] -> uint8 [H, W, 3] (inverse of `image_to_tensor`)."""
    arr = ((image.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255)
    return arr.to(torch.uint8).permute(1, 2, 0).numpy()


def none_value(num_classes: int) -> int:
    """The label value of "no class" in a label PNG of `num_classes` classes: 255, or 65535 above 255 classes."""
    return 255 if num_classes <= 255 else 65535


def save_label_png(path: Path, labels: np.ndarray, num_classes: int) -> None:
    """labels [H, W] int -> 8-bit PNG (K <= 255) or 16-bit PNG; out-of-range ids written as "none"."""
    none = none_value(num_classes)
    labels = np.where((labels >= 0) & (labels < num_classes), labels, none)
    Image.fromarray(labels.astype(np.uint8 if none == 255 else np.uint16)).save(path)
