"""Random generators keyed by what they are for, so a draw does not depend on the order work is done in.

`seeded_generator(seed, *keys)` mixes the keys with numpy's SeedSequence (well-spread seeds even for
neighbouring keys). Used for a training sample slot (seed, micro-step, slot) and for image i of a predict or
eval run (seed, i): resumed, re-ordered or multi-process runs draw the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded from (seed, *keys)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))
