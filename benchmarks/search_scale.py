"""Peak memory of `raytev search` as the query count grows: the streamed run against the whole result held at once.

Each size is a synthetic corpus of unit vectors around fixed random centres (dim 32, as benchmarks/scale.py's tiny
model gives), one query per five passages, an IVF1024,PQ16 index (scale.py's) built once per size. Two runs of the
same `raytev search --depth 100 --search_parameters nprobe=16`, each the command a user runs, measured as
scale.py measures (peak summed RSS of the process tree, polled every 0.1 s):

  streamed   the default --batch_size 4096: each batch's lines written as it is ranked
  held       --batch_size -1: every query in one batch, the whole [queries, depth] result held before writing
             (the memory `raytev search` had before it streamed)

The two runs must be byte-identical. Growth per 4x of data: the RSS ratio between consecutive sizes.

    python benchmarks/search_scale.py [--sizes 100000 400000 1600000] [--work /tmp/search-scale]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402
from data_prepare_scale import run_measured  # noqa: E402

DIM, SHARD_ROWS, SPEC = 32, 100_000, "IVF1024,PQ16"


def clustered_unit_vectors(rows: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """Unit vectors near `centres` (chosen at random), drawn in blocks so memory stays small."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, centres.shape[1]), dtype=np.float32)
    for low in range(0, rows, SHARD_ROWS):
        high = min(rows, low + SHARD_ROWS)
        block = centres[rng.integers(len(centres), size=high - low)] + 0.3 * rng.standard_normal((high - low, DIM))
        out[low:high] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def write_vectors(folder: Path, vectors: np.ndarray, kind: str, prefix: str) -> Path:
    """An embeddings folder of `vectors` in shards of SHARD_ROWS, ids prefix<row>."""
    from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter

    shards = range(0, len(vectors), SHARD_ROWS)
    writer = EmbeddingsWriter(folder, EmbeddingsManifest(model="synthetic", dim=DIM, kind=kind,
                                                         planned_shards=len(shards)), overwrite=True)
    for number, low in enumerate(shards):
        high = min(len(vectors), low + SHARD_ROWS)
        writer.write_shard(number, [f"{prefix}{row}" for row in range(low, high)], vectors[low:high])
    return folder


def measure(size: int, work: Path) -> dict:
    """Both searches at one size: seconds and peak RSS, and whether the runs agree."""
    from raytev.index.build import build_index
    from raytev.index.storage import save_index

    folder = work / f"size-{size}"
    centres = np.random.default_rng(0).standard_normal((1000, DIM))
    passages = write_vectors(folder / "passages", clustered_unit_vectors(size, 1, centres), "passages", "d")
    queries = write_vectors(folder / "queries", clustered_unit_vectors(size // 5, 2, centres), "queries", "q")
    save_index(build_index(str(passages), SPEC, progress=False), folder / "index")
    result: dict = {"passages": size, "queries": size // 5}
    for name, batch in (("streamed", 4096), ("held", -1)):
        command = [sys.executable, "-m", "raytev", "search", "--query_reps", str(queries), "--passage_reps",
                   str(folder / "index"), "--depth", "100", "--search_parameters", "nprobe=16", "--batch_size",
                   str(batch), "--save_ranking_to", str(folder / f"{name}.txt")]
        result[name] = run_measured(command, env=None, cwd=folder)
        print(f"{size:>10,} passages {size // 5:>8,} queries  {name:<9} {result[name]['seconds']:7.1f} s  peak RSS "
              f"{result[name]['peak_rss_gb']:5.2f} GB", flush=True)
    result["identical_runs"] = (folder / "streamed.txt").read_bytes() == (folder / "held.txt").read_bytes()
    shutil.rmtree(folder)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/search-scale"))
    parser.add_argument("--name", default="search_scale")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [measure(size, args.work) for size in args.sizes]
    print(f"\n{'passages':>10} {'queries':>8}  {'streamed GB':>11} {'x per 4x':>8}  {'held GB':>8} {'x per 4x':>8}  "
          "same run")
    for before, row in zip([None, *results], results):
        growth = {name: f"{row[name]['peak_rss_gb'] / before[name]['peak_rss_gb']:.2f}" if before else "-"
                  for name in ("streamed", "held")}
        print(f"{row['passages']:>10,} {row['queries']:>8,}  {row['streamed']['peak_rss_gb']:>11.2f} "
              f"{growth['streamed']:>8}  {row['held']['peak_rss_gb']:>8.2f} {growth['held']:>8}  "
              f"{row['identical_runs']}")
    settings = {"dim": DIM, "spec": SPEC, "depth": 100, "nprobe": 16}
    print(f"-> {write_result(args.name, {'settings': settings, 'results': results})}")


if __name__ == "__main__":
    main()
