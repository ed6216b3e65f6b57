"""What a training checkpoint holds beyond the model, and how it is written and read back (no Ray)."""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.json"  # written last: a checkpoint folder is complete when it exists
OPTIMIZER_FILE = "optimizer.pt"
MODEL_DIR = "model"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint_step_(\d+)$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimizer steps."""
    return f"checkpoint_step_{step:08d}"


@dataclass
class TrainerState:
    """Where training stands: steps done, the epoch and how far into it, what it trains on, and the log."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    data_fingerprint: str = ""
    global_batch_size: int = 0
    log: list[dict] = field(default_factory=list)

    def finish_epoch(self) -> None:
        """Move on to the next epoch."""
        self.epoch += 1
        self.step_in_epoch = 0


def rng_states() -> dict:
    """Every random generator training uses, so a resumed run continues the same streams.

    Only tensors and plain values, so the file loads with `weights_only=True` (no unpickling of code).
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Put the generators back as `rng_states` found them."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_training_state(directory: Path, state: TrainerState, optimizer, scheduler, scaler=None) -> None:
    """Write optimizer, scheduler, scaler and RNG states, then the trainer state (the completion mark).

    `optimizer` None: its state is saved elsewhere (sharded, by raytev.training.sharding).
    """
    torch.save({"optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_states()},
               directory / OPTIMIZER_FILE)
    (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")


def read_trainer_state(directory: Path) -> TrainerState:
    """The trainer state of a checkpoint folder."""
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


def load_training_state(directory: Path, optimizer, scheduler, scaler=None) -> TrainerState:
    """Restore optimizer (unless None), scheduler, scaler and RNG states from a checkpoint; return its trainer
    state."""
    saved = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved["scaler"] is not None:
        scaler.load_state_dict(saved["scaler"])
    restore_rng_states(saved["rng"])
    return read_trainer_state(directory)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the most steps under a run folder, or None."""
    if not run_dir.is_dir():
        return None
    complete = [(int(match.group(1)), path) for path in run_dir.iterdir()
                if (match := CHECKPOINT_PATTERN.match(path.name)) and is_complete_checkpoint(path)]
    return max(complete)[1] if complete else None


def is_complete_checkpoint(directory: Path) -> bool:
    """Whether a checkpoint folder has its trainer state, whole (a copy cut short leaves it empty or cut)."""
    try:
        read_trainer_state(directory)
    except (OSError, ValueError, TypeError):
        return False
    return True


def remove_incomplete_checkpoints(run_dir: Path) -> list[Path]:
    """Delete the checkpoint folders of a run that lack a whole trainer state; return them. Only once no worker
    writes (after a failed run): an interrupted copy would otherwise stay under a checkpoint's final name."""
    if not run_dir.is_dir():
        return []
    incomplete = sorted(path for path in run_dir.iterdir()
                        if CHECKPOINT_PATTERN.match(path.name) and not is_complete_checkpoint(path))
    for path in incomplete:
        shutil.rmtree(path, ignore_errors=True)
    return incomplete
