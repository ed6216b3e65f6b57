"""Peak memory of one training step with and without GradCache, at batch 64 queries x group 8.

Each configuration runs in a fresh process: the model and the batch are built, resident memory is read,
one forward/backward step runs, and the step's cost is the process's peak resident memory minus that
baseline (on a GPU, torch.cuda.max_memory_allocated would be the measure; this machine has none). The
batch is real: the first 64 SciFact train groups from raytev's token cache, passages at 128 tokens.

    python benchmarks/gradcache_memory.py [--batch 64] [--group 8] [--q_chunk 4] [--p_chunk 32] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def measure_one(grad_cache: bool, args) -> dict:
    """Run inside the child process: peak resident memory added by one step, and its time."""
    import psutil
    import pyarrow as pa
    import torch

    import raytev
    from raytev.bundled import resolve_model_path
    from raytev.config.sections import TrainingSection
    from raytev.data.collate import TrainingCollator
    from raytev.modeling.dense import DenseModel
    from raytev.modeling.training_step import grad_cache_step, plain_step

    prepared = raytev.prepare(dataset_name="scifact", model_name_or_path=MODEL, passage_max_len=args.max_len)
    rows = prepared.queries.read().slice(0, args.batch)
    arrays = TrainingCollator.for_table(prepared.queries, TrainingSection(train_group_size=args.group), seed=42)(
        {name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names
         if isinstance(rows.column(name).type, pa.ListType) or name == "query_id"})
    batch = {name: torch.from_numpy(array) for name, array in arrays.items()}
    model = DenseModel.from_pretrained(resolve_model_path(MODEL), temperature=0.05).train()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    if grad_cache:
        grad_cache_step(model, batch, q_chunk_size=args.q_chunk, p_chunk_size=args.p_chunk, autocast_dtype=dtype)
    else:
        plain_step(model, batch, autocast_dtype=dtype)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_gib": round((peak - baseline) / 2**30, 3), "seconds": round(seconds, 2),
            "passage_tokens": list(batch["passage_input_ids"].shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max_len", type=int, default=128)
    parser.add_argument("--q_chunk", type=int, default=4)
    parser.add_argument("--p_chunk", type=int, default=32)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--child", choices=["plain", "grad_cache"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child == "grad_cache", args)))
        return

    results = {}
    for mode in ("plain", "grad_cache"):
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", mode], check=True,
                               capture_output=True, text=True)
        results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    ratio = results["grad_cache"]["step_gib"] / results["plain"]["step_gib"]
    print(f"one step of all-MiniLM-L6-v2, {args.batch} SciFact queries x group {args.group} "
          f"(passages {results['plain']['passage_tokens']}), {args.precision}; GradCache chunks: "
          f"{args.q_chunk} queries, {args.p_chunk} passages")
    print(f"{'step':<12}{'peak GiB':>10}{'seconds':>10}")
    for mode, result in results.items():
        print(f"{mode:<12}{result['step_gib']:>10.2f}{result['seconds']:>10.1f}")
    print(f"GradCache uses {ratio:.2f}x the memory of the plain step")
    path = write_result("gradcache_memory", {
        "settings": {"model": MODEL, "batch_queries": args.batch, "group": args.group, "max_len": args.max_len,
                     "q_chunk": args.q_chunk, "p_chunk": args.p_chunk, "precision": args.precision,
                     "measure": "peak RSS of a fresh process minus RSS before the step"},
        "results": results, "ratio_grad_cache_to_plain": round(ratio, 3),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
