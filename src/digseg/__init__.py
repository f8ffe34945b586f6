"""digseg: a latent diffusion model (Stable Diffusion) as a generalist, text-prompted segmenter.

Heavy modules load lazily, so `import digseg` stays cheap; `digseg.DiGSegPipeline` imports diffusers on
first use. `TextPathway` is exported here because diffusers finds pipeline components by library name
(`model_index.json` records it as ["digseg", "TextPathway"]).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DiGSegPipeline": "digseg.pipeline",
    "DiGSegOutput": "digseg.pipeline",
    "TextPathway": "digseg.models.text",
    "MaskCodec": "digseg.masks",
    "DigsegError": "digseg.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'digseg' has no attribute {name!r}")
