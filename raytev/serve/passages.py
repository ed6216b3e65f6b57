"""Titles and texts of a corpus by docid, returned with the hits when the service was given the corpus."""

from __future__ import annotations

from pathlib import Path

from raytev.bundled import bundled_dataset_path
from raytev.data.reading import read_passages as read_corpus_passages
from raytev.data.sources import RecordFiles, expand_paths, find_beir_layout
from raytev.errors import ProblemLog, RaytevError


def corpus_files(corpus: str) -> tuple[Path, ...]:
    """The files of a corpus: a bundled dataset name, a BEIR folder, or JSONL/TSV files (a glob)."""
    folder = bundled_dataset_path(corpus) or (Path(corpus).expanduser() if Path(corpus).expanduser().is_dir()
                                               else None)
    if folder is not None:
        layout = find_beir_layout(folder)
        if layout is None:
            raise RaytevError(f"{folder} is a folder but not a BEIR one (corpus.jsonl[.gz], queries.jsonl, qrels/): "
                              "give the corpus file itself.")
        return (layout["corpus"],)
    return expand_paths(corpus)


def read_passages(corpus: str) -> dict[str, tuple[str, str]]:
    """docid -> (title, text) of a corpus (see corpus_files for what it may name)."""
    problems = ProblemLog()
    passages = read_corpus_passages(RecordFiles("corpus", corpus_files(corpus)), problems)
    problems.raise_if_any()
    return {docid: (passage.title, passage.text) for docid, passage in passages.items()}
