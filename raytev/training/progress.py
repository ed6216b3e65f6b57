"""The training log: loss, learning rate and throughput per logging window, and a progress bar (no Ray)."""

from __future__ import annotations

import time


class LogWindow:
    """Accumulates steps between two log lines and turns them into one log entry."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Start a new window now."""
        self.started = time.perf_counter()
        self.loss_sum, self.steps, self.samples = 0.0, 0, 0

    def add(self, loss: float, samples: int) -> None:
        """Count one optimizer step of `samples` queries (all workers) with this loss."""
        self.loss_sum += loss
        self.steps += 1
        self.samples += samples

    def entry(self, step: int, epoch: float, learning_rate: float) -> dict:
        """The log entry for this window (then a new window starts)."""
        seconds = time.perf_counter() - self.started
        entry = {"step": step, "epoch": round(epoch, 4), "loss": round(self.loss_sum / max(self.steps, 1), 6),
                 "learning_rate": learning_rate, "samples_per_second": round(self.samples / max(seconds, 1e-9), 2)}
        self.reset()
        return entry


def format_entry(entry: dict, total_steps: int) -> str:
    """One human line for a log entry."""
    if "event" in entry:
        return " ".join(f"{key} {value}" for key, value in entry.items())
    return (f"step {entry['step']}/{total_steps}  epoch {entry['epoch']:.2f}  loss {entry['loss']:.4f}  "
            f"lr {entry['learning_rate']:.2e}  {entry['samples_per_second']:.1f} queries/s")
