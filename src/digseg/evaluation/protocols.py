"""Test-time settings of each benchmark's published tables (docs/eval_protocols.md), overridable by flags."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace

from ..errors import ConfigError
from ..pipelines.common import INFERENCE_MODES


@dataclass(frozen=True)
class TestProtocol:
    __test__ = False  # not a pytest test class

    mode: str = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scale: tuple[int, int] | None = None  # None: the model's processing resolution
    keep_ratio: bool = True
    global_view: bool = False
    flip: bool = False
    source: str = "the model's processing resolution, whole image"

    def call_kwargs(self) -> dict:
        """Keyword arguments for `DiGSegPipeline.__call__`."""
        return {k: v for k, v in asdict(self).items() if k != "source"}


def _mmseg(config: str, crop: int, stride: int, scale: tuple[int, int]) -> TestProtocol:
    return TestProtocol("slide", (crop, crop), (stride, stride), scale, source=f"mmseg: configs/_base_/datasets/"
                        f"{config}.py scale {scale} keep_ratio; slide {crop} / {stride}")


PRESETS: dict[str, TestProtocol] = {  # closed-set (palette) evaluation, by dataset registry name
    "ade20k-150": _mmseg("ade20k", 512, 341, (2048, 512)),
    "coco-stuff-171": _mmseg("coco-stuff164k", 512, 341, (2048, 512)),
    "pascal-context-59": _mmseg("pascal_context_59", 480, 320, (520, 520)),
    "cityscapes": _mmseg("cityscapes", 1024, 768, (2048, 1024)),
    "bdd100k": TestProtocol("slide", (1024, 1024), (768, 768), (2048, 1024),
                            source="mmseg: Cityscapes' protocol, applied to BDD100K (the same 19 classes)"),
}
CATSEG = TestProtocol("slide", (384, 384), (256, 256), (640, 640), keep_ratio=False, global_view=True,
                      source="CAT-Seg: cat_seg_model.py inference_sliding_window (640 x 640, kernel 384, "
                             "overlap 0.333, global view)")


def protocol_for(dataset_name: str, open_vocab: bool = False) -> TestProtocol:
    """CAT-Seg's protocol for open-vocabulary evaluation, else the dataset's preset, else whole image."""
    return CATSEG if open_vocab else PRESETS.get(dataset_name, TestProtocol())


def parse_pair(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '512,1024' -> (512, 1024)."""
    try:
        values = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        values = []
    values *= 2 if len(values) == 1 else 1
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or N,M (positive integers), got {text!r}")
    return values[0], values[1]


def add_protocol_flags(parser: argparse.ArgumentParser, preset_note: str) -> None:
    """--mode, --window-size (the protocol's `crop_size`), --stride, --scale, --keep-ratio, --global-view, --flip."""
    g = parser.add_argument_group("test protocol", f"how images are resized and tiled ({preset_note}); "
                                  "see docs/eval_protocols.md")
    g.add_argument("--mode", choices=INFERENCE_MODES, help="whole image, or sliding windows")
    g.add_argument("--window-size", type=parse_pair, metavar="H[,W]", help="slide: window size")
    g.add_argument("--stride", type=parse_pair, metavar="H[,W]", help="slide: window step")
    g.add_argument("--scale", type=parse_pair, metavar="LONG,SHORT", help="test resize: keep-ratio (long cap, short "
                   "side), e.g. 2048,512; with --no-keep-ratio exactly W,H")
    g.add_argument("--keep-ratio", action=argparse.BooleanOptionalAction, help="test resize: keep the aspect ratio "
                   "(default: the protocol's; --no-keep-ratio: exactly --scale)")
    g.add_argument("--global-view", action=argparse.BooleanOptionalAction,
                   help="slide: also run the whole image as one window (CAT-Seg)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, help="horizontal flip test-time augmentation")


def protocol_from_args(args: argparse.Namespace, preset: TestProtocol) -> TestProtocol:
    """`preset` with the flags given; --processing-resolution drops its scale, whole mode its windows."""
    if getattr(args, "processing_resolution", None) is not None:
        if args.scale is not None:
            raise ConfigError("give either --scale or --processing-resolution, not both")
        preset = replace(preset, scale=None)
    dests = {f.name: "window_size" if f.name == "crop_size" else f.name for f in fields(TestProtocol)}  # field -> dest
    given = {f: getattr(args, dest) for f, dest in dests.items() if getattr(args, dest, None) is not None}
    protocol = replace(preset, **given)
    if protocol.mode == "whole":
        if "crop_size" in given or "stride" in given or given.get("global_view"):
            raise ConfigError("--window-size, --stride and --global-view need --mode slide")
        protocol = replace(protocol, crop_size=None, stride=None, global_view=False)
    if given:
        protocol = replace(protocol, source=f"{preset.source}; overridden: {', '.join(sorted(given))}")
    return protocol


def tiling_scale(protocol: TestProtocol, default_crop: int, resolution_given: bool = False) -> TestProtocol:
    """Slide mode without a scale or given resolution: keep-ratio scale (4 x crop, crop), so windows tile the image."""
    if protocol.mode != "slide" or protocol.scale is not None or resolution_given:
        return protocol
    crop = max(protocol.crop_size or (default_crop, default_crop))
    return replace(protocol, scale=(4 * crop, crop), keep_ratio=True,
                   source=f"{protocol.source}; slide without a scale: keep-ratio scale ({4 * crop}, {crop}) "
                          "from the crop (mmseg's ratio), so that windows tile the image")
