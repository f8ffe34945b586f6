"""Random generators keyed by what they are for (a training sample slot: seed, micro-step, slot; image i of a
predict or eval run: seed, i), so resumed, re-ordered or multi-process runs draw the same numbers."""

from __future__ import annotations

import numpy as np
import torch


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from (seed, *keys)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))
