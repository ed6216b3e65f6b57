"""Record the random-number state before a forward and replay it later, so dropout repeats exactly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RngState:
    """The CPU generator state, plus the current CUDA device's when CUDA is in use."""

    cpu: torch.Tensor
    cuda_device: int | None = None
    cuda: torch.Tensor | None = None

    @classmethod
    def capture(cls) -> RngState:
        """Snapshot the generators as they are now."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.cuda.current_device()
            return cls(torch.get_rng_state(), device, torch.cuda.get_rng_state(device))
        return cls(torch.get_rng_state())

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; the generators are put back as they were afterwards."""
        devices = [] if self.cuda_device is None else [self.cuda_device]
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.cuda_device)
            yield
