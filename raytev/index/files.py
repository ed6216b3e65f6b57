"""The `index` and `search` stages: embeddings on disk in, a saved index or a run file out."""

from __future__ import annotations

import functools
import glob
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raytev.config.stages import IndexConfig, SearchConfig
from raytev.data.runs import write_run
from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter, load_embeddings, read_tevatron_pickle
from raytev.index.build import build_index
from raytev.index.dense_index import IndexInfo
from raytev.index.search import search, shard_search
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
    """The ranking of every query (as written to the run file), and how long the search took."""

    run: Path
    lines: int
    depth: int
    format: str
    seconds: float
    query_ids: list[str] = field(repr=False)
    scores: np.ndarray = field(repr=False)  # [queries, depth], best first
    docids: np.ndarray = field(repr=False)  # [queries, depth]; None where a query found fewer

    @functools.cached_property
    def rankings(self) -> dict[str, list[tuple[str, float]]]:
        """query id -> [(docid, score)], best first: Python objects made only when asked for (a 500k-query run at
        depth 1000 would be 500M of them)."""
        return {query_id: [(str(docid), float(score)) for docid, score in zip(row_docids, row_scores)
                           if docid is not None]
                for query_id, row_scores, row_docids in zip(self.query_ids, self.scores, self.docids)}

    def summary(self) -> str:
        """What `raytev search` prints."""
        return (f"searched {len(self.query_ids):,} queries (depth {self.depth}) in {self.seconds:.1f} s: "
                f"{self.lines:,} lines ({self.format}) -> {self.run}")


def build_index_files(config: IndexConfig) -> IndexResult:
    """`raytev index`: build the index of --passage_reps and save it to --index_output_path."""
    built = build_index(config.passage_reps, config.index.index_factory, use_gpu=config.cluster.use_gpu)
    return IndexResult(save_index(built, config.index_output_path), built.info)


def search_files(config: SearchConfig) -> SearchResult:
    """`raytev search`: rank passages for every query and write the run."""
    started = time.perf_counter()
    query_ids, scores, docids = rank_files(config)
    lines = write_run(config.save_ranking_to, query_ids, scores, docids, config.format)
    return SearchResult(Path(config.save_ranking_to), lines, config.retrieval.depth, config.format,
                        time.perf_counter() - started, list(query_ids), scores, docids)


def rank_files(config: SearchConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(query ids, scores [nq, depth], docids [nq, depth]) of query embeddings against passage embeddings/index."""
    retrieval = config.retrieval
    with tempfile.TemporaryDirectory(prefix="raytev-pickles-") as scratch:
        query_reps, passage_reps = config.query_reps, config.passage_reps
        if config.input_format == "tevatron-pickle":
            query_reps = pickles_as_shards(query_reps, Path(scratch) / "queries", "queries")
            passage_reps = pickles_as_shards(passage_reps, Path(scratch) / "passages", "passages")
        query_ids, query_vectors = load_embeddings(query_reps)
        find = shard_search if retrieval.shard_search else search
        scores, docids = find(passage_reps, query_vectors, retrieval.depth, retrieval.batch_size,
                              retrieval.search_parameters)
    return query_ids.tolist(), scores, docids


def pickles_as_shards(location: str, folder: Path, kind: str) -> str:
    """Tevatron pickles (a file or a glob) written as embedding shards, so they take raytev's own path."""
    files = sorted(glob.glob(location)) or [location]
    ids_and_vectors = [read_tevatron_pickle(path) for path in files]
    writer = EmbeddingsWriter(folder, EmbeddingsManifest(model="tevatron-pickle", dim=ids_and_vectors[0][1].shape[1],
                                                         kind=kind, planned_shards=len(files)))
    for shard, (ids, vectors) in enumerate(ids_and_vectors):
        writer.write_shard(shard, ids.tolist(), vectors)
    return str(folder)
