"""How every stage grows with the corpus: wall time and peak memory at 0.1M, 0.4M and 1.6M passages, each stage run as
the command a user runs, and the growth per 4x of data.

Each size is data_prepare_scale.py's synthetic BEIR folder (passages of ~240 random words, one train query per five
passages with one qrel, 30 random negatives per query). The model is a tiny random BERT (1 layer, 32 wide, normalized
CLS vectors: what is measured is raytev around the model, not the model) with all-MiniLM-L6-v2's tokenizer, so
passages are as long as MiniLM sees them. Stages, in order, in one token cache per size:

  prepare   raytev data prepare --dataset_split train (corpus and training groups, 30 negatives)
  encode    raytev encode of the corpus, then of the train queries (--encode_is_query)
  index     raytev index: Flat, and IVF1024,PQ16 (trained on a sample)
  search    raytev search --depth 100: every query on IVF-PQ (nprobe=16); the first --flat_queries on Flat
            (exhaustive search costs corpus x queries: a fixed query count keeps it linear in the corpus)
  serve     raytev serve of the Flat index in 2 shards with --corpus and the model (text queries): each replica's
            RSS once --clients closed-loop clients have sent queries for --seconds s, and that QPS

Time is the command's wall clock (start-up included); memory is the peak of the summed RSS of its process tree
(with Ray: the driver, Ray's own processes and the actors; shared pages count in each process) polled every 0.1 s,
and the largest single process. Ratios per 4x of data: time over 4 (1.00 is linear) and RSS (1.00 is flat).

    python benchmarks/scale.py [--sizes 100000 400000 1600000] [--work /tmp/scale]
    python benchmarks/scale.py --sizes 1600000 --add_to_results   # one more size beside those measured
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, write_result  # noqa: E402
from data_prepare_scale import MODEL, make_beir_folder, run_measured  # noqa: E402
from serve_load import closed_loop  # noqa: E402

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
IVF_PQ = "IVF1024,PQ16"
STAGES = ("prepare", "encode", "index", "search", "serve")


def tiny_model(folder: Path) -> Path:
    """A random 1-layer, 32-wide BERT with all-MiniLM-L6-v2's tokenizer, normalized CLS vectors (made once)."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import BertConfig, BertModel

    from raytev.bundled import resolve_model_path
    from raytev.model.settings import DenseModelSettings

    torch.manual_seed(0)
    # Weights drawn with std 1 (not BERT's 0.02) and normalized CLS vectors: at 0.02 every passage's vector was
    # the same to 1e-4, all scores tied, which no trained model does (flat search then works at its tie limit).
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, initializer_range=1.0)
    BertModel(config).save_pretrained(folder)
    DenseModelSettings(pooling="cls", normalize=True).save(folder)
    source = Path(resolve_model_path(MODEL))
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


def raytev_command(stage: str, **flags) -> list[str]:
    """`python -m raytev <stage> --flag value ...` (stage may be two words)."""
    command = [sys.executable, "-m", "raytev", *stage.split()]
    for flag, value in flags.items():
        command += [f"--{flag}", str(value).lower() if isinstance(value, bool) else str(value)]
    return command


def step(results: dict, name: str, command: list[str], work: Path) -> None:
    """Run one measured command and print its figures."""
    measured = run_measured(command, dict(os.environ), work)
    results[name] = measured
    print(f"  {name:<15}{measured['seconds']:9.1f} s {measured['cpu_seconds']:7.0f} CPU s  peak RSS "
          f"{measured['peak_rss_gb']:6.2f} GB (largest {measured['peak_single_process_gb']:.2f})  "
          f"{measured['summary'][:90]}", flush=True)


def first_queries(query_reps: Path, count: int, folder: Path) -> Path:
    """An embeddings folder of the first `count` query vectors of `query_reps`."""
    from raytev.encoding.embeddings import EmbeddingsManifest, EmbeddingsWriter, load_embeddings

    ids, vectors = load_embeddings(str(query_reps))
    shutil.rmtree(folder, ignore_errors=True)
    writer = EmbeddingsWriter(folder, EmbeddingsManifest(model="subset", dim=vectors.shape[1], kind="queries",
                                                         planned_shards=1))
    writer.write_shard(0, ids[:count].tolist(), vectors[:count])
    return folder


def serve(index: Path, corpus: Path, model: Path, queries: list[str], work: Path, clients: int,
          seconds: float) -> dict:
    """`raytev serve` of `index` in 2 shards with the corpus and the model: start time, QPS and replica memory."""
    import served_index  # imported here: it builds on this module

    from raytev.machine import process_memory

    service = served_index.start({"index": index, "corpus": corpus, "model": model}, work, timeout=3600,
                                 num_shards=2)
    try:
        bodies = [json.dumps({"queries": [text], "k": 10}).encode() for text in queries]
        asyncio.run(closed_loop(f"{service.url}/search", bodies[:clients], clients, 3.0))  # warm
        load = asyncio.run(closed_loop(f"{service.url}/search", bodies, clients, seconds))
        memory = {name: asdict(process_memory(pid)) for name, pid in service.replicas().items()}
    finally:
        service.stop()
    printed = [line for line in service.log.read_text(errors="replace").splitlines() if "RSS " in line]
    return {"start_seconds": round(service.start_seconds, 1), "load": load, "replicas": memory, "printed": printed}


def run_size(size: int, args, model: Path) -> dict:
    """Every stage at one corpus size, in a fresh cache and output folder."""
    work = args.work
    folder = make_beir_folder(work, size, args.words_per_passage)
    cache, out = work / f"cache-{size}", work / f"out-{size}"
    for path in (cache, out):
        shutil.rmtree(path, ignore_errors=True)
    out.mkdir()
    common = {"dataset_name": folder, "model_name_or_path": model, "passage_max_len": 256,
              "dataset_cache_dir": cache}
    results: dict = {"passages": size, "queries": size // 5}
    print(f"{size:,} passages, {size // 5:,} train queries", flush=True)
    if "prepare" in args.stages:
        step(results, "prepare", raytev_command("data prepare", **common, dataset_split="train",
                                                num_negatives=30), work)
    encode_flags = {**common, "per_device_eval_batch_size": args.encode_batch}
    if "encode" in args.stages:
        step(results, "encode corpus", raytev_command("encode", **encode_flags, encode_output_path=out / "corpus"),
             work)
        step(results, "encode queries", raytev_command("encode", **encode_flags, dataset_split="train",
                                                       encode_is_query=True, encode_output_path=out / "queries"), work)
    if "index" in args.stages:
        step(results, "index flat", raytev_command("index", passage_reps=out / "corpus",
                                                   index_output_path=out / "flat"), work)
        step(results, "index ivf-pq", raytev_command("index", passage_reps=out / "corpus", index_factory=IVF_PQ,
                                                     index_output_path=out / "ivfpq"), work)
    if "search" in args.stages:
        step(results, "search ivf-pq", raytev_command("search", query_reps=out / "queries", passage_reps=out / "ivfpq",
                                                      depth=100, search_parameters="nprobe=16",
                                                      save_ranking_to=out / "ivfpq.run"), work)
        subset = first_queries(out / "queries", args.flat_queries, out / "queries-subset")
        step(results, "search flat", raytev_command("search", query_reps=subset, passage_reps=out / "flat", depth=100,
                                                    save_ranking_to=out / "flat.run"), work)
    if "serve" in args.stages:
        texts = [json.loads(line)["text"] for _, line in zip(range(1000), open(folder / "queries.jsonl"))]
        served = serve(out / "flat", folder / "corpus.jsonl", model, texts, work, args.clients, args.seconds)
        results["serve"] = served
        rss = {name: f"{memory['rss'] / 2**30:.2f}/{memory['anonymous'] / 2**30:.2f}"
               for name, memory in served["replicas"].items()}
        print(f"  {'serve':<15}started in {served['start_seconds']} s, {served['load']['qps']} QPS at "
              f"{args.clients} clients (p50 {served['load']['p50_ms']} ms), replica RSS/own GiB {rss}", flush=True)
    if not args.keep:
        for path in (cache, out):
            shutil.rmtree(path, ignore_errors=True)
    return results


def measured_rows(result: dict) -> dict[str, tuple[float, float]]:
    """Stage -> (seconds, peak GB): the commands' wall time and tree RSS; serve: start time and the largest replica."""
    rows = {name: (value["seconds"], value["peak_rss_gb"]) for name, value in result.items()
            if isinstance(value, dict) and "peak_rss_gb" in value}
    if "serve" in result:
        replicas = result["serve"]["replicas"].values()
        # RSS counts the index's and the corpus store's mapped pages (page cache, shared); "own" is anonymous memory.
        rows["serve start, RSS"] = (result["serve"]["start_seconds"], max(m["rss"] for m in replicas) / 1e9)
        rows["serve own"] = (result["serve"]["start_seconds"], max(m["anonymous"] for m in replicas) / 1e9)
    return rows


def print_table(results: list[dict]) -> None:
    """Seconds and peak GB per stage and size, and the growth per 4x of data between consecutive sizes."""
    sizes = [result["passages"] for result in results]
    stages = list(dict.fromkeys(name for result in results for name in measured_rows(result)))
    header = f"{'stage':<17}" + "".join(f"{f'{size / 1e6:g}M s':>10}{'GB':>7}" for size in sizes)
    header += "".join(f"{f'time/lin {a / 1e6:g}->{b / 1e6:g}M':>22}{'RSS x':>7}" for a, b in zip(sizes, sizes[1:]))
    print("\n" + header)
    for stage in stages:
        line = f"{stage:<17}"
        figures = [measured_rows(result).get(stage) for result in results]
        for figure in figures:
            line += f"{figure[0]:>10.1f}{figure[1]:>7.2f}" if figure else f"{'-':>10}{'-':>7}"
        for (small, large), before, after in zip(zip(sizes, sizes[1:]), figures, figures[1:]):
            if before and after:
                per_4x = np.log(4) / np.log(large / small)
                line += f"{(after[0] / before[0]) ** per_4x / 4:>22.2f}{(after[1] / before[1]) ** per_4x:>7.2f}"
        print(line)
    for result in results:
        if "serve" in result:
            load = result["serve"]["load"]
            print(f"serve {result['passages']:,}: {load['qps']} QPS, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000, 1_600_000])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--work", type=Path, default=Path("/tmp/scale"),
                        help="Folders, model and caches (the BEIR folders are kept and reused).")
    parser.add_argument("--words_per_passage", type=int, default=240)
    parser.add_argument("--encode_batch", type=int, default=256)
    parser.add_argument("--flat_queries", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="Keep each size's cache and outputs.")
    parser.add_argument("--name", default="scale", help="benchmarks/results/<name>.json")
    parser.add_argument("--add_to_results", action="store_true",
                        help="Keep the other sizes already in the result file (measure one size again, or add one).")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.work / "tiny-bert-std1-minilm-vocab")
    results = []
    if args.add_to_results:  # the sizes measured before, each replaced if measured again now
        results = [result for result in json.loads((RESULTS_DIR / f"{args.name}.json").read_text())["results"]
                   if result["passages"] not in args.sizes]
    for size in args.sizes:
        results = sorted([*results, run_size(size, args, model)], key=lambda result: result["passages"])
        # Written after every size: a 1.6M run takes hours, and what finished is kept if it stops.
        write_result(args.name, {"settings": {key: str(value) for key, value in vars(args).items()},
                                 "ivf_pq": IVF_PQ, "results": results})
    print_table(results)


if __name__ == "__main__":
    main()
