"""Carry a model folder to an offline machine through a small transfer: weights rounded to int8 per row.

    python benchmarks/model_transfer.py pack MODEL_DIR model.npz      # ~1 byte per weight, every other file kept
    python benchmarks/model_transfer.py unpack model.npz MODEL_DIR    # a plain folder again, float32 safetensors

The GPU check's machine takes 64 MiB per call and has no registry; all-MiniLM-L6-v2 is 87 MB in float32, 23 MB
packed. Rounding changes the model a little (each matrix row keeps its own scale), so a packed model is compared
only with itself: the GPU check runs both sides of every comparison on the unpacked copy.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

WEIGHTS_FILE = "model.safetensors"


def pack(model_dir: Path, target: Path) -> None:
    """Every file of `model_dir` into one .npz; 2-D+ float weights as int8 rows with a float32 scale each."""
    from safetensors.numpy import load_file

    arrays = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.name != WEIGHTS_FILE:
            arrays[f"file:{path.relative_to(model_dir)}"] = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    for name, tensor in load_file(str(model_dir / WEIGHTS_FILE)).items():
        if tensor.ndim >= 2 and tensor.dtype.kind == "f":
            rows = tensor.reshape(tensor.shape[0], -1).astype(np.float32)
            scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / 127.0
            arrays[f"int8:{name}"] = np.round(rows / scale).astype(np.int8).reshape(tensor.shape)
            arrays[f"scale:{name}"] = scale.ravel()
        else:
            arrays[f"raw:{name}"] = tensor
    with open(target, "wb") as out:  # uncompressed: int8 compresses better with xz afterwards than with zip
        np.savez(out, **arrays)


def unpack(source: Path, model_dir: Path) -> None:
    """The folder `pack` read, with float32 weights (int8 rows times their scales)."""
    from safetensors.numpy import save_file

    arrays = np.load(io.BytesIO(source.read_bytes()))
    tensors = {}
    for key in arrays.files:
        kind, name = key.split(":", 1)
        if kind == "file":
            path = model_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(arrays[key].tobytes())
        elif kind == "int8":
            quantized = arrays[key]
            scale = arrays[f"scale:{name}"].reshape(-1, *([1] * (quantized.ndim - 1)))
            tensors[name] = (quantized.astype(np.float32) * scale).astype(np.float32)
        elif kind == "raw":
            tensors[name] = arrays[key]
    save_file(tensors, str(model_dir / WEIGHTS_FILE), metadata={"format": "pt"})


def main() -> None:
    """`pack MODEL_DIR FILE` or `unpack FILE MODEL_DIR`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.target)


if __name__ == "__main__":
    main()
