"""What a diverging run does (docs/training.md, "When a run diverges"): skip steps with non-finite gradients, stop
naming the last healthy checkpoint, the newest from before the weights w_k (after k updates) that failed: nothing
non-finite is saved, no checkpoint is written during a row of skips, and older ones are pruned only once the newest
has proved healthy. `DIGSEG_NAN_GRADIENT_AT=<k>` (`<k>@<rank>`: that process only) gives the step from w_k NaN
gradients."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import DigsegError
from .checkpoint import checkpoint_step, list_checkpoints, read_trainer_state


def all_finite(tensors: Iterable[torch.Tensor], accelerator=None) -> bool:
    """Every floating-point tensor or parameter finite, on every process of `accelerator` (a collective); tensor
    subclasses (torchao's 8-bit optimizer states) are not read."""
    local = (t.to_local() if hasattr(t, "to_local") else t for t in tensors)  # a DTensor: this process's chunk
    bad = sum(type(t) in (torch.Tensor, torch.nn.Parameter) and t.is_floating_point()
              and not bool(torch.isfinite(t).all()) for t in local)
    if accelerator is not None and accelerator.num_processes > 1:
        count = torch.tensor([float(bad)], device=accelerator.device)
        bad = int(accelerator.reduce(count, reduction="sum").item())
    return bad == 0


def nan_gradient(loss: torch.Tensor) -> torch.Tensor:
    """A copy of `loss` whose gradient is NaN."""
    loss = loss.clone()
    loss.register_hook(lambda grad: grad * float("nan"))
    return loss


def inject_nan_gradient(loss: torch.Tensor, weights_step: int, rank: int) -> torch.Tensor:
    """`loss`, or with `DIGSEG_NAN_GRADIENT_AT` naming this step (and process) the same loss with NaN gradients."""
    at, _, on = os.environ.get("DIGSEG_NAN_GRADIENT_AT", "").partition("@")
    return nan_gradient(loss) if at and int(at) == weights_step and (not on or int(on) == rank) else loss


class DivergenceGuard:
    """The skipped-step counters of a run (checkpointed) and the error that stops a diverging run."""

    def __init__(self, output_dir: Path, max_consecutive: int, learning_rate: float) -> None:
        self.output_dir, self.max_consecutive, self.learning_rate = Path(output_dir), max_consecutive, learning_rate
        self.skipped = 0  # skipped steps in all
        self.consecutive = 0  # skipped steps in a row, up to now
        self.since = 0  # the weights (w_k) the current row of skips started from
        self.prune_pending = False  # the newest checkpoint has not yet proved healthy

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive, "since": self.since}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        for key in ("skipped", "consecutive", "since"):
            setattr(self, key, int((state or {}).get(key, 0)))

    def updated(self) -> bool:
        """A step updated the weights. -> whether older checkpoints may now be pruned."""
        self.consecutive = 0
        due, self.prune_pending = self.prune_pending, False
        return due

    def skipped_step(self, weights_step: int, norm: float) -> str:
        """The step from w_`weights_step` was skipped. -> the warning; raises at `max_consecutive` in a row."""
        if self.consecutive == 0:
            self.since = weights_step
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            self.stop(f"{self.consecutive} steps in a row had non-finite gradients (from step {self.since + 1})",
                      self.since)
        return (f"step {weights_step + 1} skipped: gradient norm {norm} is not finite ({self.consecutive} in a row, "
                f"{self.skipped} in all; the run stops at {self.max_consecutive} in a row)")

    def stop(self, reason: str, bad_weights_step: int):
        """Raise the error naming the newest checkpoint before w_`bad_weights_step` and a tenth of the learning rate
        (or that checkpoint's, if lower)."""
        older = [p for p in list_checkpoints(self.output_dir / "checkpoints") if checkpoint_step(p) < bad_weights_step]
        lr = self.learning_rate / 10
        if older:
            with contextlib.suppress(DigsegError, KeyError, TypeError, ValueError):  # no config recorded: a tenth
                lr = min(lr, float(read_trainer_state(older[-1])["config"]["optim"]["learning_rate"]))
            todo = (f"the last healthy checkpoint is {older[-1]}; resume from it with a lower learning rate: "
                    f"digseg train --output {self.output_dir} --resume {older[-1]} --learning-rate {lr:g} "
                    "--allow-config-change")
        else:
            todo = (f"no checkpoint is older than step {bad_weights_step}; start again with a lower learning rate: "
                    f"digseg train --config {self.output_dir / 'config.yaml'} --learning-rate {lr:g}")
        raise DigsegError(f"training stopped: {reason}; nothing non-finite was saved; {todo}")
