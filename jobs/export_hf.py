"""Write a Hugging Face dataset split as a file raytev reads from disk: JSONL rows, or qrels from its positives.

The paper recipes need a few inputs as files (`raytev mine --corpus_path`, `raytev eval --qrels / --qa_answers /
--qa_corpus`); they run this as a job so the files land on the cluster's shared filesystem:

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/export_hf.py jsonl \
        --dataset_name Tevatron/msmarco-passage-corpus --output /mnt/cluster_storage/data/msmarco/corpus.jsonl

An existing output is kept (the recipes can be run again); --overwrite replaces it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from raytev.data.sources import HubDataset
from raytev.errors import RaytevError
from raytev.staging import staged_file


def build_parser() -> argparse.ArgumentParser:
    """The command line: `jsonl` or `qrels`, the dataset (raytev's --dataset_name forms) and the output file."""
    parser = argparse.ArgumentParser(prog="python jobs/export_hf.py", description=__doc__.splitlines()[0])
    parser.add_argument("form", choices=["jsonl", "qrels"],
                        help="jsonl: one JSON object per row; qrels: TREC `qid 0 docid 1` per positive passage")
    parser.add_argument("--dataset_name", required=True, help="Hugging Face dataset: name, name/split, name:config")
    parser.add_argument("--dataset_split", default="train", help="Split, when the name does not carry one")
    parser.add_argument("--output", required=True, help="File to write (an absolute path on shared storage)")
    parser.add_argument("--columns", help="jsonl: comma-separated columns to keep (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output")
    return parser


def write_atomically(output: Path, lines: Iterable[str]) -> int:
    """Write lines under a temporary name and rename it into place, so a partial file never looks finished."""
    output.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with staged_file(output) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line)
            count += 1
    return count


def jsonl_lines(rows: Iterable[dict]) -> Iterable[str]:
    """Rows as JSON lines."""
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


def qrels_lines(rows: Iterable[dict]) -> Iterable[str]:
    """TREC qrels (`qid 0 docid 1`) from Tevatron rows' positive_passages."""
    for row in rows:
        if "positive_passages" not in row:
            raise RaytevError("qrels need Tevatron rows with positive_passages (query_id, positive_passages)")
        for passage in row["positive_passages"]:
            yield f"{row['query_id']} 0 {passage['docid']} 1\n"


def main(argv: list[str] | None = None) -> int:
    """Export one split; print what was written."""
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        print(f"{output} exists: kept (pass --overwrite to write it again)")
        return 0
    try:
        hub = HubDataset.parse(args.dataset_name, None, args.dataset_split)
        dataset = hub.load()
        columns = args.columns.split(",") if args.columns else None
        if columns:
            missing = sorted(set(columns) - set(dataset.column_names))
            if missing:
                raise RaytevError(f"{hub.label} has no columns {missing}; it has {dataset.column_names}")
            dataset = dataset.select_columns(columns)
        lines = jsonl_lines(dataset) if args.form == "jsonl" else qrels_lines(dataset)
        count = write_atomically(output, lines)
    except RaytevError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count:,} lines ({args.form}) from {hub.label} -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
