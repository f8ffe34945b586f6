"""`DiGSegOutput`, the result of a pipeline call: shared by the PyTorch pipeline and the onnxruntime one
(`digseg.runtime.pipeline`), so it imports neither torch nor diffusers.

It keeps the parts of diffusers' `BaseOutput` contract that callers use: attribute access, `out["labels"]`,
`out[0]` and `to_tuple()` (the fields that are not None, in order)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class DiGSegOutput:
    """labels [N, H, W] int64; probabilities [N, n, H, W] of the classes probability_class_ids [N, n] (n = K unless
    fewer were asked for); uncertainty [N, H, W]: members' spread (None when E == 1). When the N images' sizes
    differ, labels, probabilities and uncertainty are lists of per-image arrays ([H_i, W_i], [n, H_i, W_i], ...).
    Arrays are numpy arrays, or torch tensors when the PyTorch pipeline is asked for output_type="pt"."""

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
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]
