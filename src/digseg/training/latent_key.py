"""`LatentKey`: which of a training sample's latents is meant: `IMAGE`, `PALETTE` (all classes rendered),
`LatentKey.of_class(c)` (class c's binary mask) or `EMPTY` (the empty mask, shared by every absent class)."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("image", "palette", "class", "empty")


@dataclass(frozen=True)
class LatentKey:
    kind: str  # one of KINDS
    class_id: int | None = None  # the class of kind "class"; None for the others

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"latent key kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "class") != (self.class_id is not None):
            raise ValueError(f"a latent key has a class id exactly when its kind is 'class', got {self}")

    @classmethod
    def of_class(cls, class_id: int) -> LatentKey:
        return cls("class", int(class_id))


IMAGE = LatentKey("image")
PALETTE = LatentKey("palette")
EMPTY = LatentKey("empty")
