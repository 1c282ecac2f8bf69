"""Lookahead towards an exponential moving average of the weights (the airbench recipe).

Every `every` optimizer steps the slow copy moves towards the live weights, then the live weights are
set to the slow copy:

    slow <- decay * slow + (1 - decay) * fast;   fast <- slow

with `decay = base * (step / total_steps) ** 3`: near 0 early on (the slow copy follows the live weights)
and rising to `base` at the end of the run (it averages more and more). `finish()` makes the final sync
with decay 1 (the live weights become the slow copy). Floating-point buffers (BatchNorm running
statistics) are averaged the same way; integer buffers are left alone. Every process applies the same
update to the same weights, so DDP replicas stay identical.
"""

from __future__ import annotations

import torch
from torch import nn


class LookaheadEMA:
    """Build it from the placed model (after `accelerator.prepare`): the slow copy is made on the model's
    device, and a sync refuses weights that have since moved to another device."""

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5, base: float = 0.95**5):
        self.model, self.total_steps, self.every, self.base = model, max(int(total_steps), 1), int(every), float(base)
        self.slow = {k: v.detach().clone() for k, v in self._floats().items()}

    def _floats(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    def decay(self, step: int) -> float:
        return self.base * (min(step, self.total_steps) / self.total_steps) ** 3

    @torch.no_grad()
    def sync(self, decay: float) -> None:
        for k, fast in self._floats().items():
            slow = self.slow[k]
            slow.lerp_(fast, 1.0 - decay)
            fast.copy_(slow)

    def step(self, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if self.every and step % self.every == 0:
            self.sync(self.decay(step))

    def finish(self) -> None:
        """The closing full sync: the live weights become the slow copy."""
        self.sync(1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.slow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.slow) - set(state)
        if missing:
            raise KeyError(f"lookahead state lacks {sorted(missing)[:3]}")
        for k, v in self.slow.items():
            v.copy_(state[k])
