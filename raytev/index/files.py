"""The `index` and `search` stages: embeddings on disk in, a saved index or a run file out."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from raytev.config.sections import RetrievalSection
from raytev.config.stages import IndexConfig, SearchConfig
from raytev.data.runs import read_run, write_run_batches
from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter, load_compact, read_tevatron_pickle
from raytev.errors import ProblemLog
from raytev.index.build import build_index
from raytev.index.dense_index import IndexInfo
from raytev.index.distributed import rank_on_ray
from raytev.index.search import Source, one_part, ranked_batches
from raytev.index.storage import save_index


@dataclass
class IndexResult:
    """A saved index: where, and what it holds (its index.json)."""

    folder: Path
    info: IndexInfo

    def summary(self) -> str:
        """What `raytev index` prints."""
        return f"{self.info.describe()} -> {self.folder}"


@dataclass
class SearchResult:
    """Where the ranking of every query was written, and how long the search took."""

    run: Path
    lines: int
    depth: int
    format: str
    seconds: float
    queries: int

    @functools.cached_property
    def rankings(self) -> dict[str, list[tuple[str, float]]]:
        """query id -> [(docid, score)], best first, read back from the run file when asked for (the search
        streams its batches to the file and keeps none; MS MARCO runs carry ranks, not scores)."""
        problems = ProblemLog()
        run = read_run(self.run, problems)
        problems.raise_if_any()
        return {query_id: [(entry.docid, entry.score) for entry in entries] for query_id, entries in run.items()}

    def summary(self) -> str:
        """What `raytev search` prints."""
        return (f"searched {self.queries:,} queries (depth {self.depth}) in {self.seconds:.1f} s: "
                f"{self.lines:,} lines ({self.format}) -> {self.run}")


def build_index_files(config: IndexConfig) -> IndexResult:
    """`raytev index`: build the index of --passage_reps and save it to --index_output_path."""
    built = build_index(config.passage_reps, config.index.index_factory, use_gpu=config.cluster.use_gpu)
    return IndexResult(save_index(built, config.index_output_path), built.info)


def search_files(config: SearchConfig) -> SearchResult:
    """`raytev search`: rank passages for every query, writing the run a query batch at a time."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raytev-pickles-") as scratch:
        query_reps, passage_reps = config.query_reps, config.passage_reps
        if config.input_format == "tevatron-pickle":
            query_reps = pickles_as_shards(query_reps, Path(scratch) / "queries", "queries")
            passage_reps = pickles_as_shards(passage_reps, Path(scratch) / "passages", "passages")
        query_ids, query_vectors = load_compact(query_reps)
        lines = write_searched_run(config.save_ranking_to, query_ids, query_vectors, passage_reps, config.retrieval,
                                   config.format)
    return SearchResult(Path(config.save_ranking_to), lines, config.retrieval.depth, config.format,
                        time.perf_counter() - started, len(query_ids))


def write_searched_run(path: str | os.PathLike, query_ids: Sequence[str] | pa.Array, query_vectors: np.ndarray,
                       passages: Source,
                       retrieval: RetrievalSection, format: str = "tevatron") -> int:
    """Search `passages` (embeddings, or an index) for every query and write each batch's lines as it is ranked;
    return the lines written. --shard_search takes embedding shards one at a time and --search_workers shares the
    parts among Ray tasks, both with scratch files beside the run."""
    workers = retrieval.search_workers
    sources = passages if retrieval.shard_search or workers else one_part(passages)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batches = ranked_batches(sources, query_vectors, retrieval.depth, retrieval.batch_size,
                             retrieval.search_parameters, scratch_dir=path.parent,
                             rank_groups=rank_on_ray(workers, retrieval.search_cpus_per_task) if workers else None)
    with contextlib.closing(batches):  # a failed write ends the search (and its progress bar) at once
        return write_run_batches(path, ((query_ids[start:start + len(scores)], scores, docids)
                                        for start, scores, docids in batches), format)


def pickles_as_shards(location: str, folder: Path, kind: str) -> str:
    """Tevatron pickles (a file or a glob) written as embedding shards, so they take raytev's own path."""
    files = sorted(glob.glob(location)) or [location]
    ids_and_vectors = [read_tevatron_pickle(path) for path in files]
    writer = EmbeddingsWriter(folder, EmbeddingsManifest(model="tevatron-pickle", dim=ids_and_vectors[0][1].shape[1],
                                                         kind=kind, planned_shards=len(files)))
    for shard, (ids, vectors) in enumerate(ids_and_vectors):
        writer.write_shard(shard, ids.tolist(), vectors)
    return str(folder)
