"""Options of every stage as dataclasses; CLI flags are their field names (Tevatron main's, v1 as aliases)."""

from __future__ import annotations

from dataclasses import dataclass, field

from raytev.errors import RaytevError


def option(default, help: str, aliases: list[str] | None = None, choices: list[str] | None = None):
    """A dataclass field carrying its CLI help text, flag aliases and allowed values."""
    metadata = {"help": help}
    if aliases:
        metadata["aliases"] = [f"--{alias}" for alias in aliases]
    if choices:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


@dataclass
class ModelArguments:
    """Which model (and tokenizer) to use."""

    model_name_or_path: str | None = option(
        None,
        "Model folder or Hugging Face name. 'sentence-transformers/all-MiniLM-L6-v2' resolves to the "
        "offline copy when raytev[demo] is installed.",
    )
    tokenizer_name: str | None = option(None, "Tokenizer folder or name, when not the model's own.")
    cache_dir: str | None = option(None, "Where Hugging Face downloads models (online use).")
    pooling: str | None = option(
        None, "How token vectors become one: cls, mean or last (EOS). Default: the model's own (raytev or "
        "sentence-transformers settings), else cls.", choices=["cls", "mean", "last"])
    normalize: bool | None = option(None, "L2-normalize representations. Default: the model's own, else false.")
    temperature: float | None = option(None, "Scores are divided by this in the loss. Default: the model's own, "
                                             "else 1.0 (with --normalize, 0.01-0.05 trains far better).")
    untie_encoder: bool | None = option(None, "Separate query and passage encoders (both start from the model).",
                                        aliases=["untied"])


@dataclass
class DataArguments:
    """Where the data comes from and how it is tokenized and grouped."""

    dataset_name: str | None = option(
        None,
        "A bundled dataset ('scifact'), a Hugging Face dataset ('Tevatron/msmarco-passage', 'name/split', "
        "'name:config'), or 'json' with --dataset_path.",
    )
    dataset_config: str | None = option(None, "Hugging Face dataset config (also given as 'name:config').")
    dataset_path: str | None = option(
        None,
        "Local data: a Tevatron training JSONL(.gz), a corpus or queries JSONL/TSV, a folder of training "
        "JSONL files, or a BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).",
        aliases=["train_dir", "encode_in_path"],
    )
    dataset_split: str = option("train", "Split: the qrels file of a BEIR folder, or the Hugging Face split.",
                                aliases=["split"])
    dataset_cache_dir: str | None = option(
        None, "Where tokenized data is cached (default: $RAYTEV_CACHE_DIR or ~/.cache/raytev/datasets)."
    )
    corpus_path: str | None = option(
        None, "Corpus JSONL/TSV that training groups refer to by docid (positive_document_ids format)."
    )
    encode_is_query: bool = option(False, "The input is queries, not passages (for files that could be either).")
    query_max_len: int = option(32, "Query length in tokens after truncation.", aliases=["q_max_len"])
    passage_max_len: int = option(128, "Passage length in tokens after truncation.", aliases=["p_max_len"])
    query_prefix: str = option("", "Text put before every query (an instruction such as 'query: ').")
    passage_prefix: str = option("", "Text put before every passage (such as 'passage: ').")
    title_separator: str = option(" ", "What joins a passage's title and text.")
    append_eos_token: bool = option(False, "Append the EOS token to queries and passages (decoder models).")
    negatives_run: str | None = option(
        None,
        "Run file (qid docid score, or TREC) whose top non-positive passages become each query's hard "
        "negatives for a BEIR folder; without it negatives are random corpus passages.",
        aliases=["hn_file"],
    )
    num_negatives: int = option(30, "Negatives kept per query when they come from a run file or the corpus.")
    train_group_size: int = option(8, "Passages per query in a training step: 1 positive + the rest negatives.",
                                   aliases=["train_n_passages"])
    positive_passage_no_shuffle: bool = option(False, "Always train on the first positive passage.")
    negative_passage_no_shuffle: bool = option(False, "Always train on the first negatives, in file order.")
    pad_to_multiple_of: int = option(8, "Pad batches to the longest sequence, rounded up to this multiple.")
    padding_side: str = option("right", "Which side gets padding.", choices=["right", "left"])
    num_proc: int | None = option(
        None, "Processes that tokenize (default: 1 for small inputs, all cores for large ones).",
        aliases=["dataset_proc_num"],
    )
    seed: int = option(42, "Seed for sampling negatives and training.")

    def __post_init__(self) -> None:
        if self.train_group_size < 1:
            raise RaytevError(f"--train_group_size must be at least 1, got {self.train_group_size}")
        for name in ("query_max_len", "passage_max_len", "pad_to_multiple_of"):
            if getattr(self, name) < 1:
                raise RaytevError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.num_negatives < 0:
            raise RaytevError(f"--num_negatives must be 0 or more, got {self.num_negatives}")


@dataclass
class TrainingArguments:
    """How to train: Tevatron's (Hugging Face Trainer's) names and defaults."""

    output_dir: str | None = option(None, "Where the trained model goes (a Hugging Face folder); its "
                                          "checkpoints/ subfolder lets an interrupted run resume.")
    overwrite_output_dir: bool = option(False, "Start over even if output_dir holds a finished model or checkpoints.")
    per_device_train_batch_size: int = option(8, "Queries per worker per step (each with train_group_size passages).")
    learning_rate: float = option(5e-5, "Peak learning rate of AdamW.")
    num_train_epochs: int = option(3, "Passes over the training queries.")
    max_steps: int = option(-1, "Stop after this many steps (overrides num_train_epochs when > 0).")
    warmup_ratio: float = option(0.1, "Fraction of the steps over which the learning rate rises linearly from 0.")
    weight_decay: float = option(0.0, "AdamW weight decay (not applied to biases and LayerNorm weights).")
    max_grad_norm: float = option(1.0, "Clip gradients to this norm (0 turns clipping off).")
    fp16: bool = option(False, "float16 autocast with a gradient scaler (GPU).")
    bf16: bool = option(False, "bfloat16 autocast (GPU, and CPUs with avx512_bf16 or AMX).")
    grad_cache: bool = option(False, "GradCache: large batches in the memory of small chunks.")
    gc_q_chunk_size: int = option(4, "GradCache: queries per chunk.")
    gc_p_chunk_size: int = option(32, "GradCache: passages per chunk.")
    cross_worker_negatives: bool = option(True, "Score every query against the passages of all workers.",
                                          aliases=["negatives_x_device"])
    shuffle_buffer_size: int = option(1024, "Queries shuffled together as they stream in (0: file order).")
    save_steps: int = option(500, "Save a checkpoint every this many steps (and at the end).")
    save_total_limit: int = option(2, "Checkpoints kept.")
    logging_steps: int = option(10, "Log loss, learning rate and throughput every this many steps.")

    def __post_init__(self) -> None:
        if self.fp16 and self.bf16:
            raise RaytevError("--fp16 and --bf16 exclude each other: choose one.")
        for name in ("per_device_train_batch_size", "num_train_epochs", "save_steps", "save_total_limit",
                     "logging_steps", "gc_q_chunk_size", "gc_p_chunk_size"):
            if getattr(self, name) < 1:
                raise RaytevError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise RaytevError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class RayArguments:
    """Where the work runs."""

    num_workers: int = option(1, "Training workers (one process each; 0 runs the loop in this process, for "
                                 "debugging: no fault tolerance).")
    use_gpu: bool = option(False, "One GPU per worker; NCCL between workers (gloo on CPU).")
    cpus_per_worker: float | None = option(None, "CPUs reserved per worker (default: 1 with GPUs; on CPU, the "
                                                 "cluster's CPUs shared out, leaving room for data reading).")
    address: str | None = option(None, "Ray cluster to join ('auto', 'ray://host:10001'); default: start one "
                                        "here, or join RAY_ADDRESS.")
    storage_path: str | None = option(None, "Where checkpoints go: a shared folder or a URI (s3://, gs://) for "
                                            "multi-node runs (default: output_dir).")
    max_failures: int = option(2, "Times a failed worker group restarts from the last checkpoint.")

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise RaytevError(f"--num_workers must be 0 or more, got {self.num_workers}")
