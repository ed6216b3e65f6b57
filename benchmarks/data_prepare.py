"""Preparing bundled SciFact: raytev cold, raytev from its cache, and a peer that tokenizes on every run.

The peer is what a pipeline without a token cache pays at every start (Tevatron's dataset + collator
path): read the corpus and tokenize every passage with the same tokenizer and length, in one process.
All three are timed as whole commands (a fresh Python each, what a user waits), median of --repeats.

    python benchmarks/data_prepare.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_result  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"

PEER = """
import gzip, json
from transformers import AutoTokenizer
from raytev.bundled import bundled_dataset_path, resolve_model_path
tokenizer = AutoTokenizer.from_pretrained(resolve_model_path({model!r}))
with gzip.open(bundled_dataset_path("scifact") / "corpus.jsonl.gz", "rt") as handle:
    texts = [(r["title"] + " " + r["text"]).strip() for r in map(json.loads, handle)]
ids = tokenizer(texts, max_length={max_len}, truncation=True, padding=False)["input_ids"]
assert len(ids) == 5183
"""


def timed(command: list[str]) -> float:
    """Wall-clock seconds of a command that must succeed."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passage_max_len", type=int, default=128)
    args = parser.parse_args()

    cold, cached, peer = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            prepare = [sys.executable, "-m", "raytev", "data", "prepare", "--dataset_name", "scifact",
                       "--model_name_or_path", MODEL, "--passage_max_len", str(args.passage_max_len),
                       "--dataset_cache_dir", cache]
            cold.append(timed(prepare))
            cached.append(timed(prepare))
        peer.append(timed([sys.executable, "-c", PEER.format(model=MODEL, max_len=args.passage_max_len)]))

    seconds = {"raytev_cold": statistics.median(cold), "raytev_cached": statistics.median(cached),
               "peer_tokenize_every_run": statistics.median(peer)}
    ratios = {"cold_over_cached": seconds["raytev_cold"] / seconds["raytev_cached"],
              "peer_over_cached": seconds["peer_tokenize_every_run"] / seconds["raytev_cached"]}
    print(f"SciFact train (5,183 passages, 809 queries), {MODEL}, passage_max_len {args.passage_max_len}, "
          f"median of {args.repeats}")
    print(f"{'what':<42}{'seconds':>9}")
    for name, value in seconds.items():
        print(f"{name:<42}{value:>9.2f}")
    print(f"cached run is {ratios['cold_over_cached']:.1f}x faster than cold, "
          f"{ratios['peer_over_cached']:.1f}x faster than the peer re-tokenizing the corpus")
    path = write_result("data_prepare", {
        "settings": {"dataset": "scifact train", "model": MODEL, "passage_max_len": args.passage_max_len,
                     "query_max_len": 32, "repeats": args.repeats, "timing": "whole command, median"},
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "ratios": {name: round(value, 2) for name, value in ratios.items()},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
