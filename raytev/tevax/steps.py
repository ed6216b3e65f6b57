"""The JAX training step: loss and gradients of one global batch, plain or GradCache, on a 1-D `data` mesh of
every device of every process (one CPU, a GPU box or a TPU pod: the same code), then one optax update.

The batch is split over the mesh; parameters are replicated. Each device embeds its rows, the loss sees every
device's passages (all_gather) and is averaged over devices; its gradient is the full-batch gradient on every
device. Dropout keys are per row (fold_in of the step key with the global row index), so one device, four
devices and GradCache's chunks all draw the same masks.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from raytev.tevax.loss import contrastive_loss
from raytev.tevax.retriever import Retriever
from raytev.tevax.train_state import RetrieverTrainState

DATA_AXIS = "data"
BATCH_KEYS = ("query_input_ids", "query_attention_mask", "passage_input_ids", "passage_attention_mask")
QUERY_SIDE, PASSAGE_SIDE = 0, 1
SMALLEST_BUCKET = 16


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh over the given devices (default: every device of every process, in process order)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def bucket_width(longest: int, max_len: int, multiple_of: int = 8) -> int:
    """The padded length for a batch whose longest row has `longest` tokens: a power of two from 16 up, at most
    max_len rounded up to `multiple_of`. XLA compiles once per shape, so lengths fall into a few buckets."""
    cap = -(-max_len // multiple_of) * multiple_of
    width = SMALLEST_BUCKET
    while width < longest:
        width *= 2
    return min(width, max(cap, longest))


def pad_width(batch: dict[str, np.ndarray], widths: dict[str, int], pad_token_id: int) -> dict[str, np.ndarray]:
    """The batch with its query and passage columns padded on the right to the given widths, as int32."""
    padded = {}
    for name, array in batch.items():
        side = name.split("_")[0]
        extra = widths[side] - array.shape[1]
        value = pad_token_id if name.endswith("input_ids") else 0
        padded[name] = np.pad(np.asarray(array, dtype=np.int32), ((0, 0), (0, extra)), constant_values=value)
    return padded


def place_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the global batch, split over the mesh (every process passes equal shapes)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(batch[name], np.int32))
            for name in BATCH_KEYS}


def replicate(tree, mesh: Mesh):
    """A pytree of host values (the same on every process) as arrays replicated over the mesh."""
    sharding = NamedSharding(mesh, P())

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def host_copy(tree):
    """A pytree of replicated arrays as numpy (each process reads its own copy: no cross-host transfer)."""
    return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)) if isinstance(leaf, jax.Array)
                        else np.asarray(leaf), tree)


def row_keys(key: jax.Array | None, side: int, rows: int, first_row) -> jax.Array | None:
    """One dropout key per row: the step key folded with the side and the row's index in the global batch."""
    if key is None:
        return None
    side_key = jax.random.fold_in(key, side)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(side_key, first_row + jnp.arange(rows))


def first_rows(batch: dict, axis_name: str | None) -> tuple:
    """Global index of this device's first query and first passage row."""
    if axis_name is None:
        return 0, 0
    device = jax.lax.axis_index(axis_name)
    return device * batch["query_input_ids"].shape[0], device * batch["passage_input_ids"].shape[0]


def plain_loss_and_grads(retriever: Retriever, params, batch: dict, key, axis_name: str | None = None,
                         gather_negatives: bool = True):
    """(loss, gradients) of the whole batch in one graph."""
    q_first, p_first = first_rows(batch, axis_name)

    def loss_of(params):
        q_reps = retriever.embed_queries(params, batch["query_input_ids"], batch["query_attention_mask"],
                                         row_keys(key, QUERY_SIDE, batch["query_input_ids"].shape[0], q_first))
        p_reps = retriever.embed_passages(params, batch["passage_input_ids"], batch["passage_attention_mask"],
                                          row_keys(key, PASSAGE_SIDE, batch["passage_input_ids"].shape[0], p_first))
        # Gradient of the device-averaged loss: shard_map's transposes then sum every device's share once.
        return contrastive_loss(q_reps, p_reps, retriever.settings.temperature, axis_name, gather_negatives)

    return jax.value_and_grad(loss_of)(params)


def map_chunks(function: Callable, arrays: tuple, size: int):
    """function(*chunk) over consecutive row chunks of at most `size`, outputs concatenated (a lax.map over the
    full chunks, so one chunk's activations are alive at a time, plus the remainder)."""
    rows = arrays[0].shape[0]
    full = rows // size * size
    outputs = []
    if full:
        stacked = tuple(array[:full].reshape(rows // size, size, *array.shape[1:]) for array in arrays)
        mapped = jax.lax.map(lambda chunk: function(*chunk), stacked)
        outputs.append(mapped.reshape(full, *mapped.shape[2:]))
    if full < rows:
        outputs.append(function(*(array[full:] for array in arrays)))
    return jnp.concatenate(outputs) if len(outputs) > 1 else outputs[0]


def sum_chunks(function: Callable, arrays: tuple, size: int, zeros):
    """The sum of function(*chunk) (a pytree like `zeros`) over consecutive row chunks of at most `size`."""
    rows = arrays[0].shape[0]
    full = rows // size * size
    total = zeros
    if full:
        stacked = tuple(array[:full].reshape(rows // size, size, *array.shape[1:]) for array in arrays)

        def add(carry, chunk):
            return jax.tree.map(jnp.add, carry, function(*chunk)), None

        total, _ = jax.lax.scan(add, total, stacked)
    if full < rows:
        total = jax.tree.map(jnp.add, total, function(*(array[full:] for array in arrays)))
    return total


def grad_cache_loss_and_grads(retriever: Retriever, params, batch: dict, key, axis_name: str | None = None,
                              gather_negatives: bool = True, q_chunk_size: int = 4, p_chunk_size: int = 32):
    """(loss, gradients) equal to plain_loss_and_grads', holding one chunk's graph at a time (Gao et al., 2021):
    embed every chunk without a graph, differentiate the loss in the embeddings only, then one vjp per chunk
    with the same dropout keys (so the masks replay) and the embeddings' gradient rows."""
    q_first, p_first = first_rows(batch, axis_name)
    q_ids, q_mask, p_ids, p_mask = (batch[name] for name in BATCH_KEYS)
    q_keys = row_keys(key, QUERY_SIDE, q_ids.shape[0], q_first)
    p_keys = row_keys(key, PASSAGE_SIDE, p_ids.shape[0], p_first)

    def embed(side, params, ids, mask, keys=None):
        function = retriever.embed_queries if side == QUERY_SIDE else retriever.embed_passages
        return function(params, ids, mask, keys)

    def cached(side, ids, mask, keys, size):
        return map_chunks(lambda *chunk: jax.lax.stop_gradient(embed(side, params, *chunk)),
                          (ids, mask) + _keys(keys), size)

    q_reps = cached(QUERY_SIDE, q_ids, q_mask, q_keys, q_chunk_size)
    p_reps = cached(PASSAGE_SIDE, p_ids, p_mask, p_keys, p_chunk_size)
    loss, (q_grads, p_grads) = jax.value_and_grad(
        lambda q, p: contrastive_loss(q, p, retriever.settings.temperature, axis_name, gather_negatives),
        argnums=(0, 1))(q_reps, p_reps)

    # Per-device partial gradients, summed over devices once at the end (not once per chunk).
    local = jax.lax.pcast(params, axis_name, to="varying") if axis_name is not None else params
    zeros = jax.tree.map(jnp.zeros_like, local)

    def chunk_grads(side):
        def grads(ids, mask, reps_grad, *keys):
            _, pullback = jax.vjp(lambda params: embed(side, params, ids, mask, *keys), local)
            return pullback(reps_grad)[0]

        return grads

    grads = sum_chunks(chunk_grads(QUERY_SIDE), (q_ids, q_mask, q_grads) + _keys(q_keys), q_chunk_size, zeros)
    grads = sum_chunks(chunk_grads(PASSAGE_SIDE), (p_ids, p_mask, p_grads) + _keys(p_keys), p_chunk_size, grads)
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
    return loss, grads


def _keys(keys) -> tuple:
    """Row keys as an optional trailing chunked argument."""
    return () if keys is None else (keys,)


def make_train_step(retriever: Retriever, optimizer: optax.GradientTransformation, mesh: Mesh, training,
                    dropout: bool = True) -> Callable:
    """A jitted step(state, placed_batch) -> (state, loss) over the mesh, with the training section's
    GradCache, chunk sizes and cross-device negatives."""
    gather = training.cross_worker_negatives
    if training.grad_cache:
        def loss_and_grads(params, batch, key):
            return grad_cache_loss_and_grads(retriever, params, batch, key, DATA_AXIS, gather,
                                             training.gc_q_chunk_size, training.gc_p_chunk_size)
    else:
        def loss_and_grads(params, batch, key):
            return plain_loss_and_grads(retriever, params, batch, key, DATA_AXIS, gather)

    def on_device(params, batch, key_data):
        key = jax.random.wrap_key_data(key_data) if dropout else None
        return loss_and_grads(params, batch, key)

    sharded = jax.shard_map(on_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=(P(), P()))

    def step(state: RetrieverTrainState, batch: dict):
        step_key = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state.dropout_key), state.step))
        loss, grads = sharded(state.params, batch, step_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss

    return jax.jit(step, donate_argnums=0)
