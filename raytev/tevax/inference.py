"""Embedding without gradients on this process's devices: each padded batch split over them (what Tevatron v1's
jax_encode did with pmap), its length padded to a bucket so XLA compiles a few shapes."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from raytev.data.cache import user_cache_dir
from raytev.model.resolved import ResolvedModel
from raytev.tevax.retriever import load_retriever
from raytev.tevax.steps import DATA_AXIS, bucket_width, data_mesh, replicate


def set_up_jax(cpu_devices: int) -> None:
    """Before this process's first JAX computation: its CPU split into `cpu_devices` JAX devices (if JAX has not
    started yet, else it keeps what it has), and compiled programs kept on disk."""
    try:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    except RuntimeError:
        pass
    use_compilation_cache()


def use_compilation_cache() -> None:
    """Keep XLA's compiled programs in a node-local folder (default ~/.cache/raytev/jax-compilation), so that a
    restarted worker, a resumed run or the next encoding loads its training step instead of compiling it again
    (20-30 s a shape on a CPU, minutes on a TPU pod). JAX_COMPILATION_CACHE_DIR chooses another folder,
    JAX_ENABLE_COMPILATION_CACHE=false turns it off."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(user_cache_dir() / "jax-compilation"))


def make_embedder(model: ResolvedModel, is_query: bool, batch_size: int,
                  pad_token_id: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function from padded (input_ids, attention_mask) [B <= batch_size, L] to float32 embeddings [B, H], run on
    every local device (parameters replicated, rows split); the model's dtype is the compute dtype."""
    retriever, params = load_retriever(model, model.dtype)
    mesh = data_mesh(jax.local_devices())
    params = replicate(params, mesh)
    rows = -(-batch_size // mesh.size) * mesh.size  # every batch the same row count, divisible by the devices
    max_len = model.query_max_len if is_query else model.passage_max_len
    rows_sharding = NamedSharding(mesh, P(DATA_AXIS))
    side = retriever.embed_queries if is_query else retriever.embed_passages
    embed = jax.jit(side, out_shardings=rows_sharding)

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        count, length = input_ids.shape
        width = bucket_width(length, max_len)
        padding = ((0, rows - count), (0, width - length))
        ids = np.pad(input_ids.astype(np.int32), padding, constant_values=pad_token_id)
        mask = np.pad(attention_mask.astype(np.int32), padding)
        mask[count:, 0] = 1  # filler rows see one token, so nothing divides by an empty mask
        reps = embed(params, jax.device_put(ids, rows_sharding), jax.device_put(mask, rows_sharding))
        return np.asarray(reps, dtype=np.float32)[:count]

    return run
