"""Peak memory and step time of a decoder retriever's training step: full fine-tuning against LoRA, each with and
without gradient checkpointing, for a tiny and a medium random Llama.

Each configuration runs in a fresh process: the model, its optimizer and a batch are built, resident memory is
read, three optimizer steps run (the first creates AdamW's state), and the cost is the process's peak resident
memory minus that baseline: gradients, optimizer state and activations (on a GPU, torch.cuda.max_memory_allocated
would be the measure; this machine has none). Time is the mean of steps 2 and 3. The peer of every row is full
fine-tuning without checkpointing, measured in the same run.

Two passage lengths show the two regimes: at 64 tokens the parameters' state (gradients, AdamW's two moments:
12 bytes a parameter) dominates, which LoRA removes; at 256 tokens activations dominate, which checkpointing
removes, while LoRA adds some (each adapted projection keeps its own dropout copy of the input).

    python benchmarks/llm_memory.py [--queries 4] [--group 4] [--passage_lens 64,256] [--precision fp32]
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

SIZES = {  # Llama shapes: hidden, layers, heads, kv heads, MLP width (vocab 32000, as Llama-2's)
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=176),
    "medium": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                   intermediate_size=1408),
}
CONFIGS = {"full": (False, False), "full+checkpointing": (False, True), "lora": (True, False),
           "lora+checkpointing": (True, True)}


def measure_one(size: str, config: str, passage_len: int, args) -> dict:
    """Run inside the child process: the peak resident memory the steps added, and a step's time."""
    import psutil
    import torch
    from transformers import LlamaConfig, LlamaModel

    from raytev.config.sections import LoraSection, TrainingSection
    from raytev.model.settings import DenseModelSettings
    from raytev.modeling.adapters import add_lora
    from raytev.modeling.dense import DenseModel
    from raytev.modeling.training_step import plain_step
    from raytev.training.torch_backend import build_optimizer

    lora, checkpointing = CONFIGS[config]
    torch.manual_seed(0)
    encoder = LlamaModel(LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **SIZES[size]))
    model = DenseModel(encoder, settings=DenseModelSettings(pooling="last", normalize=True, temperature=0.05))
    if lora:
        model.query_encoder = add_lora(model.query_encoder, LoraSection(lora=True))  # Tevatron's r 16 on all
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    optimizer = build_optimizer(model, TrainingSection(learning_rate=1e-4))
    generator = torch.Generator().manual_seed(1)
    batch = {"query_input_ids": torch.randint(4, 32000, (args.queries, 32), generator=generator),
             "passage_input_ids": torch.randint(4, 32000, (args.queries * args.group, passage_len),
                                                generator=generator)}
    batch["query_attention_mask"] = torch.ones_like(batch["query_input_ids"])
    batch["passage_attention_mask"] = torch.ones_like(batch["passage_input_ids"])
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    baseline = psutil.Process().memory_info().rss
    times = []
    for _ in range(3):
        started = time.perf_counter()
        plain_step(model, batch, autocast_dtype=dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return {"step_gib": round((peak - baseline) / 2**30, 3), "seconds": round(sum(times[1:]) / 2, 2),
            "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "trainable_m": round(trainable / 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--passage_lens", default="64,256", help="Comma-separated passage lengths in tokens.")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, config, length = args.child
        print(json.dumps(measure_one(size, config, int(length), args)))
        return

    results = {}
    for length in [int(value) for value in args.passage_lens.split(",")]:
        for size in SIZES:
            for config in CONFIGS:
                child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", size, config, str(length)],
                                       check=True, capture_output=True, text=True)
                result = results[f"{size} p{length} {config}"] = json.loads(child.stdout.strip().splitlines()[-1])
                peer = results[f"{size} p{length} full"]
                result["memory_vs_full"] = round(result["step_gib"] / peer["step_gib"], 3)
                result["time_vs_full"] = round(result["seconds"] / peer["seconds"], 3)
    print(f"training steps of random Llama retrievers: {args.queries} queries x group {args.group}, queries 32 "
          f"tokens, passages pN tokens, {args.precision}, AdamW; LoRA r 16 alpha 64 dropout 0.1 on "
          "q,k,v,o,gate,up,down")
    print(f"{'model':<32}{'params M':>9}{'trained M':>10}{'step GiB':>10}{'x full':>8}{'s/step':>8}{'x full':>8}")
    for name, result in results.items():
        print(f"{name:<32}{result['parameters_m']:>9.1f}{result['trainable_m']:>10.2f}{result['step_gib']:>10.3f}"
              f"{result['memory_vs_full']:>8.2f}{result['seconds']:>8.2f}{result['time_vs_full']:>8.2f}")
    path = write_result("llm_memory", {
        "settings": {"queries": args.queries, "group": args.group, "passage_lens": args.passage_lens,
                     "precision": args.precision, "sizes": SIZES,
                     "measure": "peak RSS of a fresh process over 3 optimizer steps minus RSS before them; time: "
                                "mean of steps 2-3"},
        "results": results,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
