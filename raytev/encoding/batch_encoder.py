"""Token lists in, vectors out: the model loaded once, batches sorted by length so they carry little padding."""

from __future__ import annotations

import numpy as np

from raytev.data.collate import pad_token_lists
from raytev.model.resolved import ResolvedModel


class BatchEncoder:
    """Encodes batches of rows (`row`, an id column, `input_ids`) into `embedding` vectors; one per Ray actor.

    backend "torch" runs the DenseModel on `device`; "jax" runs raytev.tevax over this process's JAX devices
    (`jax_cpu_devices` of them on a CPU).
    """

    def __init__(self, model: ResolvedModel, is_query: bool, id_column: str, batch_size: int, pad_token_id: int,
                 device: str = "cpu", torch_threads: int | None = None, backend: str = "torch",
                 jax_cpu_devices: int = 1):
        if backend == "jax":
            from raytev.tevax.inference import make_embedder, set_up_jax

            set_up_jax(jax_cpu_devices)
            self.embed = make_embedder(model, is_query, batch_size, pad_token_id)
        else:
            self.embed = torch_embedder(model, is_query, device, torch_threads)
        self.id_column, self.batch_size, self.pad_token_id = id_column, batch_size, pad_token_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Vectors for a batch of rows, returned in the rows' order."""
        token_lists = batch["input_ids"]
        # Longest first: similar lengths share a forward pass, and memory peaks at the start if at all.
        order = np.argsort([-len(tokens) for tokens in token_lists], kind="stable")
        vectors = None
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            reps = self.embed(*pad_token_lists([token_lists[i] for i in chosen], self.pad_token_id))
            if vectors is None:
                vectors = np.empty((len(order), reps.shape[1]), dtype=np.float32)
            vectors[chosen] = reps
        return {"row": batch["row"], "id": batch[self.id_column], "embedding": vectors}


def torch_embedder(model: ResolvedModel, is_query: bool, device: str, torch_threads: int | None):
    """(input_ids, attention_mask) numpy -> float32 numpy embeddings with the torch DenseModel."""
    import torch

    from raytev.modeling.dense import DenseModel

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = torch.device(device)
    # Inference keeps no float32 master weights: the model itself runs in the reduced precision asked for
    # (on CPUs with avx512_bf16 that was ~1.5x faster than autocast; pooling stays float32).
    weights = getattr(torch, model.dtype) if model.dtype else torch.float32
    dense = DenseModel.from_resolved(model).to(device, weights).eval()
    encode = dense.encode_query if is_query else dense.encode_passage

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            reps = encode(torch.from_numpy(input_ids).to(device), torch.from_numpy(attention_mask).to(device))
        return reps.float().cpu().numpy()

    return run
