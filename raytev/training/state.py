"""Where training stands (`TrainerState`), and the checkpoint folders of a run: their names, the state file that
marks one complete, and finding the newest. No Ray, torch or JAX: the driver and both backends read these."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "trainer_state.json"  # written last: a checkpoint folder is complete when it exists
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


def write_trainer_state(directory: Path, state: TrainerState) -> None:
    """The trainer state into a checkpoint folder: last, as the mark that the folder is complete."""
    (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")


def read_trainer_state(directory: Path) -> TrainerState:
    """The trainer state of a checkpoint folder."""
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


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
