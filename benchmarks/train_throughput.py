"""Training throughput (queries/s): raytev in-process, on 1 and on 2 Ray Train workers, torch and JAX (1 worker
with 1 and 2 local devices, 2 workers), against sentence-transformers' MultipleNegativesRankingLoss fine-tuning,
in one run.

Both train all-MiniLM-L6-v2 on the same SciFact train groups (each query with its positive and the same
first train_group_size - 1 negatives), with the same batch, group size, maximum length (one length for
queries and passages, as sentence-transformers has one), precision, optimizer and learning rate. A step's
time runs from the end of the previous step to the end of this one, so data loading and tokenization count
on both sides; the first --warmup steps are left out.

    python benchmarks/train_throughput.py [--steps 12] [--batch 16] [--group 8] [--max_len 128] [--precision bf16]

JAX rows: XLA compiles the step in the first warm-up steps (left out), and XLA's CPU backend runs bf16 without the
AMX/oneDNN kernels torch uses, so on CPUs compare the fp32 rows too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

from raytev.bundled import bundled_dataset_path, resolve_model_path  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def scifact_triplets(group_size: int) -> list[dict]:
    """SciFact train groups as sentence-transformers columns: anchor, positive, negative_1..negative_{G-1}.

    Negatives are the ones raytev's data stage picks for the same seed, so both train on the same texts.
    """
    import raytev

    prepared = raytev.prepare(dataset_name="scifact", model_name_or_path=MODEL)
    root = bundled_dataset_path("scifact")
    with gzip.open(root / "corpus.jsonl.gz", "rt") as handle:
        texts = {r["_id"]: (r["title"] + " " + r["text"]).strip() for r in map(json.loads, handle)}
    with open(root / "queries.jsonl") as handle:
        queries = {r["_id"]: r["text"] for r in map(json.loads, handle)}
    rows = []
    for group in prepared.queries.read(["query_id", "positive_docids", "negative_docids"]).to_pylist():
        row = {"anchor": queries[group["query_id"]], "positive": texts[group["positive_docids"][0]]}
        negatives = group["negative_docids"][:group_size - 1]
        row.update({f"negative_{i + 1}": texts[docid] for i, docid in enumerate(negatives)})
        rows.append(row)
    return rows


def peer_throughput(rows: list[dict], args) -> float:
    """Queries/s of SentenceTransformerTrainer with MultipleNegativesRankingLoss."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses
    from transformers import TrainerCallback

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    model = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model.max_seq_length = args.max_len
    with tempfile.TemporaryDirectory() as output:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=output, per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=2e-5,
            warmup_ratio=0.1, bf16=args.precision == "bf16", use_cpu=True, save_strategy="no", report_to=[],
            logging_steps=args.steps, dataloader_drop_last=True, seed=42)
        trainer = SentenceTransformerTrainer(model=model, args=training_args,
                                             train_dataset=datasets.Dataset.from_list(rows),
                                             loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
                                             callbacks=[StepEnds()])
        trainer.train()
    seconds = [later - earlier for earlier, later in zip(ends, ends[1:])][args.warmup - 1:]
    return args.batch / statistics.median(seconds)


def raytev_throughput(args, num_workers: int, backend: str = "torch", jax_cpu_devices: int = 1) -> float:
    """Queries/s of raytev training, from its per-step log (logging every step)."""
    import raytev

    with tempfile.TemporaryDirectory() as output:
        result = raytev.train(
            model_name_or_path=MODEL, dataset_name="scifact", output_dir=output, train_group_size=args.group,
            per_device_train_batch_size=args.batch // max(num_workers, 1), query_max_len=args.max_len,
            passage_max_len=args.max_len, max_steps=args.steps, learning_rate=2e-5, temperature=0.05,
            bf16=args.precision == "bf16", logging_steps=1, save_steps=args.steps, num_workers=num_workers,
            negative_passage_no_shuffle=True, positive_passage_no_shuffle=True, backend=backend,
            jax_cpu_devices=jax_cpu_devices)
    per_step = [entry["samples_per_second"] for entry in result.log if "step" in entry][args.warmup:]
    return statistics.median(per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="global queries per step")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max_len", type=int, default=128)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--skip_jax", action="store_true", help="torch rows only (no JAX installed)")
    args = parser.parse_args()

    import ray

    rows = scifact_triplets(args.group)
    results = {"sentence-transformers MNRL (peer)": peer_throughput(rows, args)}
    ray.init(include_dashboard=False, log_to_driver=False)
    runs = [("raytev in-process", 0, "torch", 1), ("raytev 1 worker", 1, "torch", 1),
            ("raytev 2 workers", 2, "torch", 1)]
    if not args.skip_jax:
        runs += [("raytev jax 1 worker, 1 device", 1, "jax", 1), ("raytev jax 1 worker, 2 devices", 1, "jax", 2),
                 ("raytev jax 2 workers", 2, "jax", 1)]
    for label, workers, backend, devices in runs:
        results[label] = raytev_throughput(args, workers, backend, devices)
    peer = results["sentence-transformers MNRL (peer)"]

    print(f"all-MiniLM-L6-v2 on SciFact train: batch {args.batch} queries x group {args.group}, max_len "
          f"{args.max_len}, {args.precision}, {args.steps} steps (median after {args.warmup} warm-up)")
    print(f"{'trainer':<36}{'queries/s':>10}{'x peer':>9}")
    for label, value in results.items():
        print(f"{label:<36}{value:>10.2f}{value / peer:>9.2f}")
    path = write_result("train_throughput", {
        "settings": {"model": MODEL, "dataset": "scifact train", "batch_queries": args.batch, "group": args.group,
                     "max_len": args.max_len, "precision": args.precision, "steps": args.steps,
                     "warmup": args.warmup, "optimizer": "AdamW lr 2e-5"},
        "queries_per_second": {label: round(value, 3) for label, value in results.items()},
        "ratio_to_peer": {label: round(value / peer, 3) for label, value in results.items()},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
