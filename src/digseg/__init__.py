"""digseg: a latent diffusion model (Stable Diffusion) as a generalist, text-prompted segmenter.

Heavy modules load lazily, so `import digseg` stays cheap. Saved pipelines name digseg's components by their defining
module (["digseg.models.text", "TextPathway"]), so loading does not depend on the names exported here."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {"DiGSegPipeline": "digseg.pipelines.pipeline", "DiGSegOutput": "digseg.outputs",
            "TextPathway": "digseg.models.text", "MaskCodec": "digseg.pipelines.masks", "DigsegError": "digseg.errors"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'digseg' has no attribute {name!r}")
