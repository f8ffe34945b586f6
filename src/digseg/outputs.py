"""`DiGSegOutput`, shared by the PyTorch and the onnxruntime pipelines (so it imports neither torch nor diffusers),
with the parts of diffusers' `BaseOutput` contract callers use: `out["labels"]`, `out[0]`, `to_tuple()`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class DiGSegOutput:
    """labels [N, H, W] int64; probabilities [N, n, H, W] of the classes probability_class_ids [N, n]; uncertainty
    [N, H, W] (None when E == 1); lists of per-image arrays when the images' sizes differ. numpy arrays, or torch
    tensors for output_type="pt"."""

    labels: Any
    probabilities: Any
    uncertainty: Any
    class_names: list[str]
    probability_class_ids: Any = None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: str | int):
        if isinstance(key, str):
            return dict(zip(self.keys(), self.to_tuple()))[key]  # KeyError for a field that is None
        return self.to_tuple()[key]
