"""The serving corpus store: RSS and lookups/s of raytev's pread reader against a memory-mapped reader of the same
store file (the peer: what the store did before, the same binary search over views of a mapping), in one run.

A synthetic corpus of --rows passages (~1 KB of text each) becomes a store in a scratch cache; each reader then runs
in a fresh process and looks up --lookups random docids (a few per "request" of 20), and reports its RSS split into
own memory (RssAnon) and mapped files (RssFile) before and after, from /proc/self/status.

    python benchmarks/corpus_store_memory.py [--rows 300000] [--lookups 10000]
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

WORDS = "the of cell protein gene expression patients study results treatment cancer risk".split()


def status_mib() -> dict[str, float]:
    """RssAnon and RssFile of this process, MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("RssAnon", "RssFile")}


class MappedStore:
    """The peer: the store file memory-mapped, values read through memoryviews of the mapping."""

    def __init__(self, path: str):
        import pyarrow as pa

        with pa.memory_map(path) as source:
            reader = pa.ipc.open_file(source)
            self.batches = [reader.get_batch(number) for number in range(reader.num_record_batches)]
        self.columns = []
        for batch in self.batches:
            views = []
            for column in batch.columns:
                _, offsets, data = column.buffers()
                views.append((memoryview(offsets).cast("q"), memoryview(data).cast("B")))
            self.columns.append(views)
        self.firsts = [self.value(number, 0, 0) for number in range(len(self.batches))]

    def value(self, number: int, column: int, row: int) -> bytes:
        offsets, data = self.columns[number][column]
        return data[offsets[row]:offsets[row + 1]].tobytes()

    def passages(self, docids: list[str]) -> list:
        found = []
        for docid in docids:
            key = docid.encode()
            number = bisect.bisect_right(self.firsts, key) - 1
            rows = range(self.batches[number].num_rows)
            row = bisect.bisect_left(rows, key, key=lambda row: self.value(number, 0, row))
            found.append(tuple(str(self.value(number, column, row), "utf-8") for column in (1, 2)))
        return found


def measure(reader: str, path: str, rows: int, lookups: int) -> dict:
    """One reader's figures, in this (fresh) process."""
    import random

    from raytev.serving.corpus_store import CorpusStore

    before = status_mib()
    store = CorpusStore(path) if reader == "raytev pread" else MappedStore(path)
    opened = status_mib()
    rng = random.Random(0)
    asked = [f"doc{rng.randrange(rows):08d}" for _ in range(lookups)]
    started = time.perf_counter()
    answers = [store.passages(asked[low:low + 20]) for low in range(0, lookups, 20)]
    seconds = time.perf_counter() - started
    after = status_mib()
    assert all(text for group in answers for _, text in group)
    return {"reader": reader, "lookups_per_s": round(lookups / seconds), "rss_anon_mib": round(after["RssAnon"], 1),
            "rss_file_mib": round(after["RssFile"], 1),
            "rss_file_growth_mib": round(after["RssFile"] - opened["RssFile"], 1),
            "rss_anon_growth_mib": round(after["RssAnon"] - before["RssAnon"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # reader, store path: one measurement
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.rows, args.lookups)))
        return

    import random

    from raytev.serving.corpus_store import corpus_store

    work = Path(tempfile.mkdtemp(prefix="corpus-store-bench-"))
    rng = random.Random(0)
    corpus = work / "corpus.jsonl"
    with open(corpus, "w") as handle:
        for number in range(args.rows):
            text = " ".join(rng.choices(WORDS, k=150))
            handle.write(json.dumps({"docid": f"doc{number:08d}", "title": f"title {number}", "text": text}) + "\n")
    store = corpus_store(str(corpus), work / "cache")
    size_mib = store.path.stat().st_size / 2**20
    print(f"store of {args.rows:,} passages: {size_mib:.0f} MiB", flush=True)
    results = []
    for reader in ("memory map (peer)", "raytev pread"):
        output = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--lookups", str(args.lookups),
                                 "--child", reader, str(store.path)], capture_output=True, text=True, check=True)
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
        entry = results[-1]
        print(f"  {reader:<18} {entry['lookups_per_s']:>8,} lookups/s  RSS own {entry['rss_anon_mib']:>6.1f} MiB, "
              f"mapped files {entry['rss_file_mib']:>6.1f} MiB (+{entry['rss_file_growth_mib']:.1f} MiB over "
              f"{args.lookups:,} lookups)", flush=True)
    peer, ours = results
    print(f"pread / memory map: lookups/s {ours['lookups_per_s'] / peer['lookups_per_s']:.2f}x; mapped-file RSS "
          f"growth {ours['rss_file_growth_mib']:.1f} MiB vs {peer['rss_file_growth_mib']:.1f} MiB")
    path = write_result("corpus_store_memory", {"settings": {"rows": args.rows, "lookups": args.lookups,
                                                             "store_mib": round(size_mib, 1)}, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
