"""The GPU check: raytev's CUDA paths at small sizes on one GPU machine, each a row of one table.

`benchmarks/gpu_check.sh` sets the machine up and runs this; `--cpu` runs the same checks without a GPU, to test the
script itself. Rows (a failure in one does not stop the others):

  doctor          `raytev doctor`: what torch, faiss, jax and Ray see
  train bf16      1 GPU worker (NCCL), bf16 autocast: loss falls, step time
  train fp16+gc   1 GPU worker, fp16 with the gradient scaler and GradCache: loss falls, step time
  encode gpu      `raytev pipeline --use_gpu --fp16` on SciFact test: corpus docs/s, nDCG@10
  encode cpu      the same in float32 on the CPUs: nDCG@10 within NDCG_TOLERANCE of the GPU run
  faiss gpu       a flat index on the GPU: top-k equal to the CPU index's, queries/s of both
  serve gpu       `raytev serve --use_gpu`: answers a query, its hits equal the pipeline's run
  jax train       --backend jax on the GPU: loss falls, step time
  jax encode      --backend jax encoding on the GPU: nDCG@10 within NDCG_TOLERANCE of torch's

The model is --model (default all-MiniLM-L6-v2, offline through the demo extra); a folder with a config.json and a
tokenizer but no weights is initialised at random (seed 0), for machines that cannot download one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

NDCG_TOLERANCE = 0.005  # the bound on GPU fp16 vs CPU fp32 (and JAX vs torch) nDCG@10
TOP_K = 100
DATASET = "scifact"


@dataclass
class Row:
    """One check's outcome: ok, FAIL or skip, the figure that matters, and how long it took."""

    check: str
    status: str
    figure: str
    seconds: float
    detail: str = ""
    numbers: dict = field(default_factory=dict)


class Skip(Exception):
    """A check that cannot run on this machine (say why)."""


@dataclass
class Context:
    """What the checks share: the options, the work folder, the model, and outputs of earlier checks."""

    args: argparse.Namespace
    work: Path
    model: str = ""
    outputs: dict = field(default_factory=dict)

    @property
    def gpu(self) -> bool:
        return not self.args.cpu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The check's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="model name or folder; a folder with config.json and no weights is initialised at random")
    parser.add_argument("--work_dir", default="out/gpu_check", help="where checks write (emptied first)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per training check")
    parser.add_argument("--batch_size", type=int, default=32, help="training queries per step")
    parser.add_argument("--cpu", action="store_true", help="no GPU: run the checks on CPUs (tests the script)")
    parser.add_argument("--only", default="", help="comma-separated check names to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated check names to leave out")
    parser.add_argument("--results", default=None, help="JSON output (default benchmarks/results/gpu_check.json, "
                                                        "or gpu_check_cpu.json with --cpu)")
    parser.add_argument("--list", action="store_true", help="print the check names and stop")
    return parser.parse_args(argv)


def format_table(rows: list[Row], title: str) -> str:
    """The rows as one aligned text table (what the check prints at the end)."""
    headers = ("check", "status", "figure", "seconds")
    cells = [(row.check, row.status, row.figure, f"{row.seconds:.1f}") for row in rows]
    widths = [max(len(header), *(len(cell[i]) for cell in cells)) if cells else len(header)
              for i, header in enumerate(headers)]
    line = "  ".join("-" * width for width in widths)
    text = [title, line, "  ".join(header.ljust(width) for header, width in zip(headers, widths)), line]
    text += ["  ".join(cell.ljust(width) for cell, width in zip(cell_row, widths)) for cell_row in cells]
    text.append(line)
    text += [f"{row.check}: {row.detail}" for row in rows if row.detail]
    return "\n".join(text)


def run_check(name: str, check, context: Context) -> Row:
    """Run one check, timing it; an exception becomes a FAIL row (with its last line), Skip a skip row."""
    started = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    try:
        figure, numbers, detail = check(context)
        status = "ok"
    except Skip as reason:
        figure, numbers, detail, status = "", {}, str(reason), "skip"
    except Exception as error:  # noqa: BLE001 - one failing check must not hide the others' figures
        traceback.print_exc()
        message = str(error).strip().splitlines()
        figure, numbers, detail, status = "", {}, f"{type(error).__name__}: {message[-1] if message else ''}", "FAIL"
    row = Row(name, status, figure, time.perf_counter() - started, detail, numbers)
    print(f"--- {name}: {row.status} {row.figure} {row.detail}", flush=True)
    return row


# --- the checks -----------------------------------------------------------------------------------------------------

def check_doctor(context: Context):
    """`raytev doctor` runs; the figure is what torch, faiss and jax see."""
    done = subprocess.run([sys.executable, "-m", "raytev", "doctor"], capture_output=True, text=True, timeout=180)
    print(done.stdout, done.stderr, sep="\n", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"raytev doctor exited {done.returncode}: {done.stderr.strip()[-300:]}")
    report = doctor_sections(done.stdout)
    warnings = [line.strip() for line in done.stdout.splitlines() if line.startswith("warning:")]
    torch, faiss, jax = report.get("torch", {}), report.get("faiss", {}), report.get("jax", {})
    figure = (f"torch {torch.get('build', '?')} devices {torch.get('devices', '?')}; "
              f"faiss GPUs {faiss.get('GPUs', '?')}; jax {jax.get('backend', jax.get('version', 'absent'))}; "
              f"{len(warnings)} warning(s)")
    return figure, {"report": report, "warnings": warnings}, " | ".join(warnings)


def doctor_sections(text: str) -> dict[str, dict[str, str]]:
    """`raytev doctor`'s text as {section: {name: value}}."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line.startswith("  ") and ":" in line:
            name, value = line.strip().split(":", 1)
            current[name] = value.strip()
    return sections


def losses_of(log: list[dict]) -> list[float]:
    """The logged losses of a training run, in order."""
    return [entry["loss"] for entry in log if entry.get("loss") is not None]


def train_check(context: Context, name: str, **flags):
    """Train the check's model for --steps steps with `flags`; the loss must fall and stay finite."""
    import raytev

    output = context.work / name
    result = raytev.train(
        output_dir=str(output), model_name_or_path=context.model, dataset_name=DATASET, dataset_split="train",
        num_negatives=15, train_group_size=8, per_device_train_batch_size=context.args.batch_size,
        query_max_len=32, passage_max_len=128, learning_rate=1e-4, max_steps=context.args.steps,
        logging_steps=max(1, context.args.steps // 6), save_steps=10 * context.args.steps, num_workers=1,
        use_gpu=context.gpu, overwrite_output_dir=True, temperature=0.05, **flags)
    losses = losses_of(result.log)
    if len(losses) < 2 or not all(math.isfinite(loss) for loss in losses) or losses[-1] >= losses[0]:
        raise RuntimeError(f"loss did not fall: {losses}")
    rates = [entry["samples_per_second"] for entry in result.log[1:] if "samples_per_second" in entry]
    queries_per_second = sum(rates) / len(rates) if rates else float("nan")  # the first window holds compilation
    step_ms = 1000 * context.args.batch_size / queries_per_second
    context.outputs[name] = output
    return (f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {step_ms:.0f} ms/step",
            {"losses": losses, "step_ms": step_ms, "queries_per_second": queries_per_second,
             "seconds": result.seconds, "steps": result.steps}, "")


def check_train_bf16(context: Context):
    """1 GPU worker, bf16 autocast."""
    return train_check(context, "train-bf16", bf16=True)


def check_train_fp16_gradcache(context: Context):
    """1 GPU worker, fp16 with the gradient scaler, GradCache chunks of 8 queries and 32 passages."""
    if not context.gpu:
        raise Skip("fp16 training needs a GPU")
    return train_check(context, "train-fp16-gc", fp16=True, grad_cache=True, gc_q_chunk_size=8, gc_p_chunk_size=32)


def trained_model(context: Context) -> str:
    """The bf16-trained model when that check ran, else the starting model."""
    trained = context.outputs.get("train-bf16")
    return str(trained) if trained and (Path(trained) / "config.json").exists() else context.model


def pipeline_check(context: Context, name: str, **flags):
    """`raytev pipeline` (encode, index, search, evaluate) of SciFact test with `flags`; nDCG@10 and corpus docs/s."""
    import raytev

    output = context.work / name
    result = raytev.pipeline(output_dir=str(output), model_name_or_path=trained_model(context), dataset_name=DATASET,
                             dataset_split="test", passage_max_len=256, per_device_eval_batch_size=256, depth=TOP_K,
                             **flags)
    print(result.stage_table(), flush=True)
    corpus = next(stage for stage in result.stages if stage.name == "encode passages")
    rows = int(corpus.detail.split()[0].replace(",", ""))
    docs_per_second = rows / corpus.seconds
    ndcg = result.metrics["nDCG@10"]
    context.outputs[name] = {"dir": output, "ndcg": ndcg, "docs_per_second": docs_per_second}
    return ndcg, docs_per_second, {"nDCG@10": ndcg, "corpus_docs_per_second": docs_per_second,
                                   "stages": {stage.name: [round(stage.seconds, 2), stage.detail]
                                              for stage in result.stages}}


def check_encode_gpu(context: Context):
    """Encode on the GPU in fp16 (index on the GPU when faiss has one)."""
    flags = dict(use_gpu=True, fp16=True) if context.gpu else dict(bf16=True)
    ndcg, rate, numbers = pipeline_check(context, "encode-gpu", **flags)
    return f"nDCG@10 {ndcg:.4f}, corpus {rate:,.0f} docs/s", numbers, ""


def check_encode_cpu(context: Context):
    """The same pipeline in float32 on the CPUs; nDCG@10 must equal the GPU run's within NDCG_TOLERANCE."""
    ndcg, rate, numbers = pipeline_check(context, "encode-cpu")
    gpu = context.outputs.get("encode-gpu")
    if gpu is None:
        return f"nDCG@10 {ndcg:.4f}, corpus {rate:,.0f} docs/s (no GPU run to compare)", numbers, ""
    difference = abs(ndcg - gpu["ndcg"])
    numbers.update(gpu_minus_cpu=gpu["ndcg"] - ndcg, gpu_speedup=gpu["docs_per_second"] / rate)
    if difference > NDCG_TOLERANCE:
        raise RuntimeError(f"nDCG@10 CPU {ndcg:.4f} vs GPU {gpu['ndcg']:.4f}: differ by {difference:.4f} "
                           f"> {NDCG_TOLERANCE}")
    return (f"nDCG@10 {ndcg:.4f} (GPU {gpu['ndcg']:+.4f} diff {gpu['ndcg'] - ndcg:+.4f}), "
            f"GPU {gpu['docs_per_second'] / rate:.1f}x docs/s", numbers, "")


def check_faiss_gpu(context: Context):
    """A flat inner-product index on the GPU: the same top-k ids as faiss on the CPU (ties aside), and both speeds."""
    import numpy as np

    from raytev.encoding.embeddings import load_embeddings
    from raytev.index.faiss_setup import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        build = "a GPU build" if hasattr(faiss, "StandardGpuResources") else "a CPU-only build"
        raise Skip(f"faiss {faiss.__version__} here is {build} that sees {faiss.get_num_gpus()} GPU(s): "
                   "install raytev[gpu] (faiss-gpu-cu12, which needs CUDA 12's cuBLAS)")
    encoded = context.outputs.get("encode-gpu")
    if encoded is None:
        raise Skip("needs the encode gpu check's embeddings")
    _, corpus = load_embeddings(str(Path(encoded["dir"]) / "corpus_embeddings"))
    _, queries = load_embeddings(str(Path(encoded["dir"]) / "query_embeddings"))
    corpus, queries = np.ascontiguousarray(corpus, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32)
    cpu_index = faiss.IndexFlatIP(corpus.shape[1])
    cpu_index.add(corpus)
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, cpu_index)
    timings = {}
    for name, index in (("cpu", cpu_index), ("gpu", gpu_index)):
        index.search(queries[:8], TOP_K)  # warm up
        started = time.perf_counter()
        scores, ids = index.search(queries, TOP_K)
        timings[name] = (time.perf_counter() - started, scores, ids)
    _, cpu_scores, cpu_ids = timings["cpu"]
    _, gpu_scores, gpu_ids = timings["gpu"]
    same = float(np.mean(cpu_ids == gpu_ids))
    score_gap = float(np.max(np.abs(cpu_scores - gpu_scores)))
    # Where ids differ, the scores must tie (within float32 noise): the order of equal scores is not defined.
    differing = cpu_ids != gpu_ids
    untied = float(np.max(np.abs(cpu_scores - gpu_scores)[differing])) if differing.any() else 0.0
    if score_gap > 1e-3 or untied > 1e-3:
        raise RuntimeError(f"GPU top-{TOP_K} differs from CPU: {same:.4f} ids equal, score gap {score_gap:.2e}")
    qps = {name: len(queries) / timing[0] for name, timing in timings.items()}
    return (f"top-{TOP_K} ids equal {same:.4f}, GPU {qps['gpu']:,.0f} q/s vs CPU {qps['cpu']:,.0f}",
            {"ids_equal": same, "max_score_gap": score_gap, "queries_per_second": qps,
             "corpus": list(corpus.shape), "queries": len(queries)}, "")


def check_serve_gpu(context: Context):
    """`raytev serve --use_gpu` on the pipeline's index: answers queries; top-1 agrees with the pipeline's run."""
    from ray import serve

    import raytev
    from raytev.serving.client import SearchClient

    encoded = context.outputs.get("encode-gpu")
    if encoded is None:
        raise Skip("needs the encode gpu check's index")
    folder = Path(encoded["dir"])
    run = first_hits(folder / "run.txt")
    query_ids = sorted(run)[:50]
    texts = query_texts(query_ids)
    result = raytev.serve(model_name_or_path=trained_model(context), index=str(folder / "index"), corpus=DATASET,
                          use_gpu=context.gpu, port=8000 + os.getpid() % 1000)
    try:
        client = SearchClient(result.url)
        client.search([texts[0]], k=10)  # warm up
        started = time.perf_counter()
        answers = [client.search([text], k=10)[0] for text in texts]
        latency_ms = 1000 * (time.perf_counter() - started) / len(texts)
    finally:
        serve.shutdown()
    agree = sum(answer[0]["docid"] == run[qid] for qid, answer in zip(query_ids, answers)) / len(query_ids)
    if agree < 0.9:
        raise RuntimeError(f"served top-1 equals the pipeline run's for only {agree:.0%} of {len(query_ids)} queries")
    return (f"{latency_ms:.1f} ms/query one at a time, top-1 = pipeline's for {agree:.0%}",
            {"latency_ms": latency_ms, "top1_agreement": agree, "queries": len(query_ids)}, "")


def first_hits(run_path: Path) -> dict[str, str]:
    """Query id -> its best docid, from a Tevatron run file (qid, docid, score; best first)."""
    best: dict[str, str] = {}
    for line in run_path.read_text().splitlines():
        query_id, docid = line.split()[:2]
        best.setdefault(query_id, docid)
    return best


def query_texts(query_ids: list[str]) -> list[str]:
    """The bundled SciFact query texts of `query_ids`."""
    from raytev.bundled import bundled_dataset_path

    texts = {}
    for line in (bundled_dataset_path(DATASET) / "queries.jsonl").read_text().splitlines():
        record = json.loads(line)
        texts[str(record["_id"])] = record["text"]
    return [texts[query_id] for query_id in query_ids]


def check_jax_train(context: Context):
    """--backend jax on the GPU (JaxTrainer), bf16: loss falls, step time."""
    jax_available(context)
    return train_check(context, "jax-train", backend="jax", bf16=True)


def check_jax_encode(context: Context):
    """--backend jax encoding on the GPU of the torch-trained model: nDCG@10 equal to torch's within NDCG_TOLERANCE."""
    jax_available(context)
    flags = dict(use_gpu=True, bf16=True) if context.gpu else dict(bf16=True)
    ndcg, rate, numbers = pipeline_check(context, "jax-encode", backend="jax", **flags)
    torch_run = context.outputs.get("encode-gpu")
    if torch_run is not None and abs(ndcg - torch_run["ndcg"]) > NDCG_TOLERANCE:
        raise RuntimeError(f"nDCG@10 JAX {ndcg:.4f} vs torch {torch_run['ndcg']:.4f}: differ by more than "
                           f"{NDCG_TOLERANCE}")
    versus = f" (torch {torch_run['ndcg']:.4f})" if torch_run else ""
    return f"nDCG@10 {ndcg:.4f}{versus}, corpus {rate:,.0f} docs/s", numbers, ""


def jax_available(context: Context) -> None:
    """Skip unless jax is installed (and, without --cpu, sees a GPU)."""
    try:
        import jax
    except ImportError:
        raise Skip("jax is not installed (the jax extra)") from None
    if context.gpu and not any(device.platform == "gpu" for device in jax.devices()):
        raise Skip(f"jax {jax.__version__} sees no GPU (devices: {jax.devices()}); install jax[cuda12]")


CHECKS = {
    "doctor": check_doctor,
    "train bf16": check_train_bf16,
    "train fp16+gc": check_train_fp16_gradcache,
    "encode gpu": check_encode_gpu,
    "encode cpu": check_encode_cpu,
    "faiss gpu": check_faiss_gpu,
    "serve gpu": check_serve_gpu,
    "jax train": check_jax_train,
    "jax encode": check_jax_encode,
}


def selected_checks(only: str, skip: str) -> list[str]:
    """The check names to run, in CHECKS order; unknown names are an error."""
    wanted = [name.strip() for name in only.split(",") if name.strip()] or list(CHECKS)
    dropped = [name.strip() for name in skip.split(",") if name.strip()]
    unknown = [name for name in wanted + dropped if name not in CHECKS]
    if unknown:
        raise SystemExit(f"gpu_check: unknown check(s) {unknown}; the checks are: {', '.join(CHECKS)}")
    return [name for name in CHECKS if name in wanted and name not in dropped]


def prepare_model(name: str, work: Path) -> str:
    """The model to use: `name` itself, or, for a folder with config.json but no weights, a seeded random init."""
    folder = Path(name)
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if not (folder / "config.json").exists() or has_weights:
        return name
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(0)
    target = work / "model-random-init"
    AutoModel.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(target)
    AutoTokenizer.from_pretrained(folder).save_pretrained(str(target))
    return str(target)


def gpu_name() -> str:
    """The first CUDA device's name, or why there is none."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


def main(argv: list[str] | None = None) -> int:
    """Run the selected checks, print the table, write the JSON; exit 1 when a check failed."""
    args = parse_args(argv)
    if args.list:
        print("\n".join(CHECKS))
        return 0
    names = selected_checks(args.only, args.skip)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ray
    from common import write_result

    work = Path(args.work_dir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    context = Context(args, work, prepare_model(args.model, work))
    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=True)
    rows = [run_check(name, CHECKS[name], context) for name in names]
    ray.shutdown()
    title = (f"raytev GPU check on {gpu_name()} ({'CPU mode' if args.cpu else 'GPU mode'}), model {args.model}, "
             f"{args.steps} steps x {args.batch_size} queries, {time.perf_counter() - started:.0f} s in all")
    print("\n" + format_table(rows, title), flush=True)
    default_name = "gpu_check_cpu" if args.cpu else "gpu_check"
    payload = {"title": title, "gpu": gpu_name(), "settings": vars(args), "rows": [asdict(row) for row in rows]}
    if args.results:
        Path(args.results).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        print(f"wrote {write_result(default_name, payload)}")
    return 1 if any(row.status == "FAIL" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
