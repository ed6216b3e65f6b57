"""How `raytev data prepare` grows with the corpus: wall time and peak memory at 0.1M, 0.4M (and 1.6M) passages.

Each size is a synthetic BEIR folder (passages of ~250 random words of the model's vocabulary, one train query per
five passages with one qrel each, 30 random negatives per query), prepared by the whole command in a fresh cache
folder, as a new user would run it. Peak RSS is of the process tree (the command and its tokenizing workers,
summed, polled every 0.1 s); the largest single process is printed beside it, and the CPU time of the whole tree
(a check on linearity that other work on the machine disturbs less than wall time). Ratios are per 4x of data:
time over linear (1.00 is linear) and peak RSS (1.00 is flat).

    python benchmarks/data_prepare_scale.py [--sizes 100000 400000 1600000] [--pythonpath /other/checkout]

--pythonpath runs another checkout's raytev (e.g. `git worktree add /tmp/prep-head HEAD` for the code before a
change) on the same folders; --name keeps its result apart.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_result  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WRITE_ROWS = 100_000  # passages generated and written at a time


def vocabulary_words() -> pa.Array:
    """Whole words of the model's WordPiece vocabulary that need no JSON escaping (one token each)."""
    from raytev.bundled import resolve_model_path

    words = (Path(resolve_model_path(MODEL)) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return pa.array([word for word in words if word.isascii() and word.isalnum()])


def random_texts(rng: np.random.Generator, words: pa.Array, rows: int, length: int) -> pa.Array:
    """`rows` texts of `length` random words each, joined by Arrow (no Python loop per word)."""
    picks = words.take(pa.array(rng.integers(0, len(words), size=rows * length)))
    offsets = pa.array(np.arange(0, rows * length + 1, length, dtype=np.int32))
    return pc.binary_join(pa.ListArray.from_arrays(offsets, picks), " ")


def json_lines(fields: list[tuple[str, pa.Array]]) -> str:
    """JSON object lines from string columns whose values need no escaping."""
    parts: list = []
    for index, (name, values) in enumerate(fields):
        parts += [("{" if index == 0 else ", ") + f'"{name}": "', values, '"']
    parts[-1] = '"}'
    return "\n".join(pc.binary_join_element_wise(*parts, "").to_pylist()) + "\n"


def make_beir_folder(root: Path, passages: int, words_per_passage: int, seed: int = 0) -> Path:
    """A synthetic BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv), reused when already complete."""
    folder = root / f"beir-{passages}"
    if (folder / "qrels" / "train.tsv").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "qrels").mkdir(parents=True)
    rng, words = np.random.default_rng(seed), vocabulary_words()
    with open(folder / "corpus.jsonl", "w") as corpus:
        for start in range(0, passages, WRITE_ROWS):
            rows = min(WRITE_ROWS, passages - start)
            ids = pc.binary_join_element_wise("d", pa.array(np.arange(start, start + rows)).cast(pa.string()), "")
            corpus.write(json_lines([("_id", ids), ("title", pa.array([""] * rows)),
                                     ("text", random_texts(rng, words, rows, words_per_passage))]))
    queries = passages // 5
    query_ids = pc.binary_join_element_wise("q", pa.array(np.arange(queries)).cast(pa.string()), "")
    (folder / "queries.jsonl").write_text(json_lines([("_id", query_ids),
                                                      ("text", random_texts(rng, words, queries, 10))]))
    positives = pc.binary_join_element_wise("d", pa.array(rng.integers(0, passages, size=queries)).cast(pa.string()),
                                            "")
    rows = pc.binary_join_element_wise(query_ids, positives, "1", "\t").to_pylist()
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


def run_measured(command: list[str], env: dict, cwd: Path) -> dict:
    """Run a command to completion; its wall and CPU time, the peak summed RSS of its process tree, its largest
    process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(process.pid)
    peak_tree = peak_single = 0
    while process.poll() is None:
        total = 0
        for member in [root, *root.children(recursive=True)]:
            try:
                rss = member.memory_info().rss
            except psutil.Error:  # a worker that just ended
                continue
            total += rss
            peak_single = max(peak_single, rss)
        peak_tree = max(peak_tree, total)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    # Every process of the tree has been waited for by now, so their CPU time is in RUSAGE_CHILDREN.
    finished = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = finished.ru_utime - usage.ru_utime + finished.ru_stime - usage.ru_stime
    output = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_gb": peak_tree / 1e9,
            "peak_single_process_gb": peak_single / 1e9,
            "summary": output.strip().splitlines()[-1] if output.strip() else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--words_per_passage", type=int, default=240)
    parser.add_argument("--num_negatives", type=int, default=30)
    parser.add_argument("--work_dir", default=None,
                        help="Where the folders and caches go (default: a temporary folder, removed after; given: "
                             "the folders are kept and reused).")
    parser.add_argument("--pythonpath", default=None, help="Run the raytev of this checkout instead.")
    parser.add_argument("--name", default="data_prepare_scale", help="Result file name (benchmarks/results/).")
    args = parser.parse_args()

    temporary = None if args.work_dir else tempfile.TemporaryDirectory(prefix="raytev-scale-")
    work = Path(args.work_dir or temporary.name)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    results = []
    for size in args.sizes:
        folder = make_beir_folder(work, size, args.words_per_passage)
        cache = work / f"cache-{size}"
        shutil.rmtree(cache, ignore_errors=True)
        command = [sys.executable, "-m", "raytev", "data", "prepare", "--dataset_name", str(folder),
                   "--dataset_split", "train", "--model_name_or_path", MODEL, "--passage_max_len", "256",
                   "--num_negatives", str(args.num_negatives), "--dataset_cache_dir", str(cache)]
        measured = run_measured(command, env, work)
        shutil.rmtree(cache, ignore_errors=True)
        results.append({"passages": size, "queries": size // 5, **measured})
        print(f"{size:>10,} passages: {measured['seconds']:8.1f} s ({measured['cpu_seconds']:.0f} CPU s), "
              f"peak RSS {measured['peak_rss_gb']:.2f} GB "
              f"({measured['summary']})", flush=True)

    # Per 4x of data: time over 4 (1.00 is linear) and the peak RSS ratio (1.00 is flat).
    print(f"\n{'passages / queries':<24}{'wall s':>9}{'CPU s':>9}{'peak RSS GB':>13}{'largest GB':>12}"
          f"{'wall/lin':>10}{'CPU/lin':>9}{'RSS x/4x':>10}")
    for previous, result in zip([None, *results], results):
        growth = ""
        if previous is not None:
            factor = result["passages"] / previous["passages"]
            per_4x = np.log(4) / np.log(factor)
            for name, key in (("time", "seconds"), ("cpu", "cpu_seconds"), ("rss", "peak_rss_gb")):
                result[f"{name}_ratio_per_4x"] = (result[key] / previous[key]) ** per_4x
            growth = (f"{result['time_ratio_per_4x'] / 4:>10.2f}{result['cpu_ratio_per_4x'] / 4:>9.2f}"
                      f"{result['rss_ratio_per_4x']:>10.2f}")
        print(f"{result['passages']:>10,} / {result['queries']:<11,}{result['seconds']:>9.1f}"
              f"{result['cpu_seconds']:>9.0f}{result['peak_rss_gb']:>13.2f}{result['peak_single_process_gb']:>12.2f}{growth}")
    first, last = results[0], results[-1]
    if len(results) > 1:
        data_ratio, time_ratio = last["passages"] / first["passages"], last["seconds"] / first["seconds"]
        cpu_ratio, rss_ratio = last["cpu_seconds"] / first["cpu_seconds"], last["peak_rss_gb"] / first["peak_rss_gb"]
        print(f"{last['passages']:,} vs {first['passages']:,}: peak RSS x{rss_ratio:.2f}, wall time x{time_ratio:.2f} "
              f"({time_ratio / data_ratio:.2f} of linear), CPU time x{cpu_ratio:.2f} ({cpu_ratio / data_ratio:.2f} of "
              f"linear) for x{data_ratio:.0f} data")
    path = write_result(args.name, {
        "settings": {"model": MODEL, "passage_max_len": 256, "words_per_passage": args.words_per_passage,
                     "queries_per_passage": 0.2, "num_negatives": args.num_negatives,
                     "pythonpath": args.pythonpath, "timing": "whole command, one run per size",
                     "memory": "peak of the summed RSS of the process tree, polled every 0.1 s"},
        "results": results,
    })
    print(f"wrote {path}")
    if temporary is not None:
        temporary.cleanup()


if __name__ == "__main__":
    main()
