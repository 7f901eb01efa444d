"""Per-epoch random streams shared by the samplers: deterministic given a seed or a torch.Generator."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class EpochRandom:
    """Hands out one torch.Generator per epoch.

    With `generator`, every epoch draws from that generator (its state advances; reproducible when the
    caller seeds it). Otherwise epoch e uses a fresh generator seeded from (seed, e), so an epoch can be
    replayed with `set_epoch(e)`; `seed=None` draws the seed once from torch's global RNG (so
    `torch.manual_seed` controls it). The epoch counter advances after every pass.
    """

    def __init__(self, seed: Optional[int], generator: Optional[torch.Generator]):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        self.generator = generator
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    def next(self) -> torch.Generator:
        if self.generator is not None:
            gen = self.generator
        else:
            state = np.random.SeedSequence([self.seed & (2**63 - 1), self.epoch]).generate_state(2, np.uint32)
            gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        self.epoch += 1
        return gen
