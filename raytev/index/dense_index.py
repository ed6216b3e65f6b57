"""A FAISS index together with the ids of its vectors (in add order) and what it was built from."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from raytev.errors import RaytevError
from raytev.index.faiss_setup import faiss

FORMAT = "raytev-index"
VERSION = 1
METRIC = "inner_product"  # every raytev index scores by inner product (cosine when the vectors are normalized)


@dataclass
class IndexInfo:
    """What an index holds and how it was made; saved as index.json."""

    spec: str  # the faiss.index_factory string ("Flat", "HNSW32", "IVF4096,PQ64", ...)
    dim: int
    ntotal: int
    model: str = ""  # from the embeddings manifest ("" for bare shard files)
    kind: str = ""  # "passages" or "queries"
    embeddings: str = ""  # the location the vectors were read from
    metric: str = METRIC
    build_parameters: str = ""  # faiss ParameterSpace settings applied before adding, e.g. "efConstruction=80"
    training_vectors: int = 0  # 0 when the index needed no training
    device: str = "cpu"
    build_seconds: float = 0.0
    format: str = FORMAT
    version: int = VERSION

    def describe(self) -> str:
        """One line for the CLI: what was built from what, and how long it took."""
        trained = f", trained on {self.training_vectors:,} vectors" if self.training_vectors else ""
        return (f"{self.spec} index of {self.ntotal:,} x {self.dim} vectors ({self.model or 'unknown model'}) from "
                f"{self.embeddings}{trained}, built on {self.device} in {self.build_seconds:.1f} s")


@dataclass(eq=False)
class DenseIndex:
    """A FAISS index, the id of every vector (position i holds the id of FAISS id i) and its IndexInfo."""

    faiss_index: faiss.Index
    ids: pa.Array  # large_string, in add order
    info: IndexInfo

    def docids(self, positions: np.ndarray) -> np.ndarray:
        """The ids at `positions` (any shape) as an object array of str; None where a position is -1."""
        return docids_at(self.ids, positions)

    def flat_vectors(self) -> np.ndarray | None:
        """The vectors of a flat index as a zero-copy [ntotal, dim] view (valid while it lives); None for others."""
        index = faiss.downcast_index(self.faiss_index)
        if not isinstance(index, faiss.IndexFlat):
            return None
        return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)

    def row_slice(self, low: int, high: int) -> DenseIndex:
        """Rows [low, high) of a flat index as an index of their own: a view of the same pages when FAISS mapped the
        file (load_index(mmap=True)), else a copy of those rows."""
        vectors = self.flat_vectors()
        if vectors is None:
            raise RaytevError(f"a {self.info.spec} index cannot be cut by rows: only a flat index can.")
        whole = faiss.downcast_index(self.faiss_index)
        part = faiss.IndexFlat(whole.d, whole.metric_type)
        rows = vectors[low:high]
        if len(rows) and not getattr(whole.codes, "is_owned", True):  # mapped (faiss >= 1.11: MaybeOwnedVector)
            # The view shares the mapping's owner, which keeps the file mapped as long as either index lives.
            part.codes = faiss.MaybeOwnedVectorUInt8.create_view(faiss.swig_ptr(rows), rows.nbytes, whole.codes.owner)
            part.ntotal = len(rows)
        else:
            part.add(rows)
        return DenseIndex(part, self.ids.slice(low, len(rows)), replace(self.info, ntotal=part.ntotal))

    @functools.cached_property
    def max_norm(self) -> float:
        """The largest vector norm of a flat index (bounds FAISS's rounding error in exact search)."""
        vectors = self.flat_vectors()
        if vectors is None or len(vectors) == 0:
            return 0.0
        # Blocks keep the temporary small on multi-GB indexes.
        squares = max(float(np.einsum("ij,ij->i", block, block, dtype=np.float64).max())
                      for block in (vectors[start:start + 65536] for start in range(0, len(vectors), 65536)))
        return float(np.sqrt(squares))


def docids_at(ids: pa.Array, positions: np.ndarray) -> np.ndarray:
    """`ids` at `positions` (any shape) as an object array of str; None where a position is -1."""
    positions = np.asarray(positions, dtype=np.int64)
    found = positions >= 0
    docids = np.full(positions.shape, None, dtype=object)
    if found.any():
        docids[found] = ids.take(pa.array(positions[found])).to_numpy(zero_copy_only=False)
    return docids


def set_parameters(index: faiss.Index, parameters: str) -> None:
    """Apply faiss ParameterSpace settings such as "nprobe=32" or "efSearch=128,efConstruction=80"."""
    for setting in filter(None, (part.strip() for part in parameters.split(","))):
        name, _, value = setting.partition("=")
        try:
            faiss.ParameterSpace().set_index_parameter(index, name.strip(), float(value))
        except (RuntimeError, ValueError):
            raise RaytevError(
                f"cannot set {setting!r} on a {type(faiss.downcast_index(index)).__name__}: give name=value pairs "
                "that fit the index (nprobe for IVF, efSearch / efConstruction for HNSW).") from None
