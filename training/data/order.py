"""Which clips a step trains on, and the random numbers of each sample: pure functions of the step.

The clips are read in epochs; epoch e visits them in the order of a permutation drawn from
(seed, e). Global step s takes the positions s·G … s·G + G − 1 of that endless sequence
(G = batch per process × processes), and process r takes its slice r·B … r·B + B − 1.

Each sample's noise, timestep and caption-dropout draw come from a generator seeded by
(seed, s, position in the global batch). Nothing here has state to save, so a resumed run
draws exactly what the uninterrupted run drew, and a run on several processes draws, sample
for sample, what a one-process run at the same global batch draws.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SHA-256, so nearby inputs give unrelated streams)."""
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@functools.lru_cache(maxsize=2)
def epoch_permutation(num_clips: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x0DA7A))
    return torch.randperm(num_clips, generator=g)


@dataclass(frozen=True)
class SampleOrder:
    num_clips: int
    batch_per_process: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_clips < 1:
            raise ValueError(f"the data set holds no clip (num_clips={self.num_clips})")

    @property
    def global_batch(self) -> int:
        return self.batch_per_process * self.world_size

    def clip_indices(self, step: int, rank: int) -> list[int]:
        """Clip indices of process ``rank`` at global step ``step``."""
        start = step * self.global_batch + rank * self.batch_per_process
        out = []
        for position in range(start, start + self.batch_per_process):
            epoch, offset = divmod(position, self.num_clips)
            out.append(int(epoch_permutation(self.num_clips, self.seed, epoch)[offset]))
        return out

    def generators(self, step: int, rank: int) -> list[torch.Generator]:
        """One CPU generator per sample of process ``rank`` at ``step``."""
        first = rank * self.batch_per_process
        return [
            torch.Generator().manual_seed(derive_seed(self.seed, step, first + i))
            for i in range(self.batch_per_process)
        ]
