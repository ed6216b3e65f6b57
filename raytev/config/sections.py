"""The option sections stages share: model, text, data, training, precision, cluster, inference, actors, index,
retrieval. Field names are Tevatron main's flag names; its v1 names are aliases."""

from __future__ import annotations

from dataclasses import dataclass

from raytev.config.fields import Options, option
from raytev.errors import RaytevError

POOLING_CHOICES = ("cls", "mean", "last", "eos")  # eos: Tevatron main's name for last
ATTENTION_CHOICES = ("eager", "sdpa", "flash_attention_2", "flex_attention")
TORCH_DTYPE_CHOICES = ("float32", "bfloat16", "float16", "auto")


@dataclass(kw_only=True)
class ModelSection(Options):
    """Which model (and tokenizer), and how it pools and scores; unset settings are the model's own."""

    model_name_or_path: str = option(
        help="Model folder or Hugging Face name. 'sentence-transformers/all-MiniLM-L6-v2' resolves to the offline "
             "copy when raytev[demo] is installed.", swap="model")
    tokenizer_name: str | None = option(None, "Tokenizer folder or name, when not the model's own.", swap="model")
    cache_dir: str | None = option(None, "Where Hugging Face downloads models (online use).", swap="model")
    pooling: str | None = option(
        None, "How token vectors become one: cls, mean or last (EOS). Default: the model's own (raytev or "
              "sentence-transformers settings), else cls.", choices=POOLING_CHOICES, swap="model")
    normalize: bool | None = option(None, "L2-normalize representations. Default: the model's own, else false.",
                                    swap="model")
    temperature: float | None = option(None, "Scores are divided by this in the loss. Default: the model's own, "
                                             "else 1.0 (with --normalize, 0.01-0.05 trains far better).")
    untie_encoder: bool | None = option(None, "Separate query and passage encoders (both start from the model).",
                                        aliases=("untied",), swap="model")
    lora_name_or_path: str | None = option(
        None, "A LoRA adapter (folder or Hugging Face name) applied on top of the model; a folder raytev trained "
              "with --lora can also be given as --model_name_or_path alone (it names its base model).",
        swap="model")
    attn_implementation: str | None = option(
        None, "Attention kernel: sdpa, eager, flash_attention_2 (GPU, needs flash-attn) or flex_attention. "
              "Default: transformers' choice (sdpa where supported).", choices=ATTENTION_CHOICES, swap="model")
    torch_dtype: str | None = option(
        None, "dtype the weights are loaded (and, training, kept) in: float32, bfloat16, float16 or auto (the "
              "checkpoint's). bfloat16 halves a 7B model's memory; --bf16 alone keeps float32 weights and autocasts.",
        choices=TORCH_DTYPE_CHOICES, aliases=("dtype",), swap="model")

    def check(self) -> None:
        if self.temperature is not None and not self.temperature > 0:
            raise RaytevError(f"--temperature must be above 0, got {self.temperature}")


@dataclass(kw_only=True)
class QueryModelSection(ModelSection):
    """The model that encodes query texts; none: the service takes query vectors only."""

    model_name_or_path: str | None = option(
        None, "Model that encodes query texts (the one the index was encoded with); none: vectors only.",
        swap="model")


@dataclass(kw_only=True)
class TextSection(Options):
    """How text becomes tokens: lengths, prompts, EOS. Unset lengths and prompts are the model's own."""

    query_max_len: int | None = option(
        None, "Query length in tokens after truncation. Default: a sentence-transformers model's max_seq_length "
              "(as sentence-transformers and MTEB encode), else 32 (Tevatron's).", aliases=("q_max_len",),
        at_least=1, swap="model")
    passage_max_len: int | None = option(
        None, "Passage length in tokens after truncation. Default: a sentence-transformers model's "
              "max_seq_length, else 128 (Tevatron's).", aliases=("p_max_len",), at_least=1)
    query_prefix: str | None = option(
        None, "Text put before every query (an instruction such as 'query: '). Default: the model's own prompt "
              "(raytev_model.json, or sentence-transformers' 'query' prompt), else none.", swap="model")
    passage_prefix: str | None = option(
        None, "Text put before every passage (such as 'passage: '). Default: the model's own prompt "
              "(sentence-transformers' 'document', 'passage' or 'corpus'), else none.")
    append_eos_token: bool | None = option(
        None, "Append the EOS token to queries and passages (decoder models such as RepLLaMA). Default: what the "
              "model was trained with (a raytev export records it), else false.", swap="model")


@dataclass(kw_only=True)
class DataSection(Options):
    """Where the data comes from, how passages are read, and how BEIR splits become training groups."""

    dataset_name: str | None = option(
        None, "A bundled dataset ('scifact'), a Hugging Face dataset ('Tevatron/msmarco-passage', 'name/split', "
              "'name:config'), or 'json' with --dataset_path.")
    dataset_config: str | None = option(None, "Hugging Face dataset config (also given as 'name:config').")
    dataset_path: str | None = option(
        None, "Local data: a Tevatron training JSONL(.gz), a corpus or queries JSONL/TSV, a folder of training "
              "JSONL files, or a BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv).",
        aliases=("train_dir", "encode_in_path"))
    dataset_split: str = option("train", "Split: the qrels file of a BEIR folder, or the Hugging Face split.",
                                aliases=("split",))
    dataset_cache_dir: str | None = option(
        None, "Where tokenized data is cached (default: $RAYTEV_CACHE_DIR or ~/.cache/raytev/datasets).")
    rehash_inputs: bool = option(
        False, "Read every input file in full to fingerprint it, instead of trusting the cache's memo for files whose "
               "size and modification time are unchanged (for files rewritten with their old times).")
    corpus_path: str | None = option(
        None, "Corpus JSONL/TSV that training groups refer to by docid (positive_document_ids format).")
    encode_is_query: bool = option(False, "The input is queries, not passages (for files that could be either).")
    title_separator: str = option(" ", "What joins a passage's title and text.")
    negatives_run: str | None = option(
        None, "Run file (qid docid score, or TREC) whose top non-positive passages become each query's hard "
              "negatives for a BEIR folder; without it negatives are random corpus passages.", aliases=("hn_file",))
    num_negatives: int = option(30, "Negatives kept per query when they come from a run file or the corpus.",
                                at_least=0)
    num_proc: int | None = option(
        None, "Processes that tokenize (default: 1 for small inputs, all cores for large ones).",
        aliases=("dataset_proc_num",), at_least=1)
    seed: int = option(42, "Seed for sampling negatives and training.")


@dataclass(kw_only=True)
class TrainingSection(Options):
    """How to train: Tevatron's (Hugging Face Trainer's) names and defaults."""

    overwrite_output_dir: bool = option(False, "Start over even if output_dir holds a finished model or checkpoints.")
    train_group_size: int = option(8, "Passages per query in a training step: 1 positive + the rest negatives.",
                                   aliases=("train_n_passages",), at_least=1)
    positive_passage_no_shuffle: bool = option(False, "Always train on the first positive passage.")
    negative_passage_no_shuffle: bool = option(False, "Always train on the first negatives, in file order.")
    pad_to_multiple_of: int = option(8, "Pad batches to the longest sequence, rounded up to this multiple.",
                                     at_least=1)
    padding_side: str = option("right", "Which side gets padding.", choices=("right", "left"))
    per_device_train_batch_size: int = option(8, "Queries per worker per step (each with train_group_size "
                                                 "passages).", at_least=1)
    learning_rate: float = option(5e-5, "Peak learning rate of AdamW.")
    num_train_epochs: int = option(3, "Passes over the training queries.", at_least=1)
    max_steps: int = option(-1, "Stop after this many steps (overrides num_train_epochs when > 0).")
    warmup_ratio: float = option(0.1, "Fraction of the steps over which the learning rate rises linearly from 0.")
    weight_decay: float = option(0.0, "AdamW weight decay (not applied to biases and LayerNorm weights).")
    max_grad_norm: float = option(1.0, "Clip gradients to this norm (0 turns clipping off).")
    grad_cache: bool = option(False, "GradCache: large batches in the memory of small chunks.")
    gc_q_chunk_size: int = option(4, "GradCache: queries per chunk.", at_least=1)
    gc_p_chunk_size: int = option(32, "GradCache: passages per chunk.", at_least=1)
    cross_worker_negatives: bool = option(True, "Score every query against the passages of all workers.",
                                          aliases=("negatives_x_device",))
    shuffle_buffer_size: int = option(1024, "Queries shuffled together as they stream in (0: file order).",
                                      at_least=0)
    save_steps: int = option(500, "Save a checkpoint every this many steps (and at the end).", at_least=1)
    save_total_limit: int = option(2, "Checkpoints kept.", at_least=1)
    logging_steps: int = option(10, "Log loss, learning rate and throughput every this many steps.", at_least=1)
    num_workers: int = option(1, "Training workers (one process each; 0 runs the loop in this process, for "
                                 "debugging: no fault tolerance).", at_least=0)
    cpus_per_worker: float | None = option(None, "CPUs reserved per worker (default: 1 with GPUs; on CPU, the "
                                                 "cluster's CPUs shared out, leaving one for data reading).",
                                           at_least=0)
    storage_path: str | None = option(None, "Where checkpoints go: a shared folder or a URI (s3://, gs://) for "
                                            "multi-node runs (default: output_dir).")
    max_failures: int = option(2, "Times a failed worker group restarts from the last checkpoint.", at_least=0)
    gradient_checkpointing: bool = option(False, "Recompute each layer's activations in the backward pass instead "
                                                 "of keeping them: the same gradients in far less memory, about a "
                                                 "third more compute.")
    gradient_accumulation_steps: int = option(
        1, "Micro-batches per optimizer step: each worker reads per_device_train_batch_size x this many queries and "
           "back-propagates them in slices. Unlike --grad_cache, each slice's in-batch negatives are only its own "
           "passages (a smaller pool of negatives).", at_least=1)
    fsdp: bool = option(False, "Shard the weights, gradients and optimizer state across the workers (PyTorch FSDP2 "
                               "fully_shard, ZeRO-3's equivalent) so that a model too big for one device trains; "
                               "checkpoints resume on any number of workers.")

    def check(self) -> None:
        if not 0 <= self.warmup_ratio < 1:
            raise RaytevError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    @property
    def queries_per_worker_step(self) -> int:
        """Queries each worker trains on per optimizer step: the per-device batch times the micro-batches."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


@dataclass(kw_only=True)
class RerankSection(Options):
    """How a cross-encoder reads a query and a passage together."""

    rerank_max_len: int | None = option(
        None, "Length of a query-passage pair in tokens; the longer of the two is cut first. Default: the length "
              "a raytev reranker was trained with, else 512 (Tevatron's).", at_least=8, swap="reranker")


@dataclass(kw_only=True)
class LoraSection(Options):
    """Parameter-efficient fine-tuning with LoRA adapters (peft), as Tevatron main's flags name it."""

    lora: bool = option(False, "Train LoRA adapters instead of the whole model (the base weights stay frozen); "
                               "the output folder holds the adapter and names its base model.")
    lora_r: int = option(16, "LoRA rank.", at_least=1)
    lora_alpha: int = option(64, "LoRA scaling numerator (the update is scaled by alpha / r).", at_least=1)
    lora_dropout: float = option(0.1, "Dropout on the adapters' inputs.", at_least=0)
    lora_target_modules: str = option(
        "q_proj,k_proj,v_proj,o_proj,down_proj,up_proj,gate_proj",
        "Comma-separated names of the linear layers that get adapters (Llama/Mistral/Qwen names; BERT's are "
        "query,key,value,dense).")
    save_merged_model: bool = option(False, "--lora: also write the base model with the adapter merged in, as a "
                                            "plain model folder at output_dir/merged.")

    def check(self) -> None:
        if not 0 <= self.lora_dropout < 1:
            raise RaytevError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.save_merged_model and not self.lora:
            raise RaytevError("--save_merged_model merges a LoRA adapter: it needs --lora.")

    @property
    def target_modules(self) -> list[str]:
        """The target module names as a list."""
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]


@dataclass(kw_only=True)
class PrecisionSection(Options):
    """Numeric precision of the model's forward (and backward) passes."""

    fp16: bool = option(False, "float16 (GPU): autocast with a gradient scaler when training, float16 weights "
                               "when encoding.", swap=("model", "reranker"))
    bf16: bool = option(False, "bfloat16 (GPU, and CPUs with avx512_bf16 or AMX): autocast when training, "
                               "bfloat16 weights when encoding.", swap=("model", "reranker"))

    def check(self) -> None:
        if self.fp16 and self.bf16:
            raise RaytevError("--fp16 and --bf16 exclude each other: choose one.")

    @property
    def dtype_name(self) -> str | None:
        """'bfloat16', 'float16', or None for full precision."""
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else None


@dataclass(kw_only=True)
class ClusterSection(Options):
    """Where the work runs, and whether Ray's own logs show."""

    use_gpu: bool = option(False, "Use GPUs: one per training worker or encoding actor (NCCL between workers).")
    use_tpu: bool = option(False, "Use TPUs (--backend jax): each training worker runs on one TPU host and all its "
                                  "chips.")
    tpu_chips_per_worker: int = option(4, "--use_tpu: TPU chips of one host (v4-8: 4, v5litepod-8: 8).", at_least=1)
    tpu_topology: str | None = option(None, "--use_tpu with several hosts: the slice topology (2x2x2 for v4-16), as "
                                            "Ray Train reserves whole slices.")
    tpu_type: str | None = option(None, "--use_tpu with several hosts: the accelerator type (TPU-V4, TPU-V5E, ...).")
    address: str | None = option(None, "Ray cluster to join ('auto', 'ray://host:10001'); default: start one "
                                        "here, or join RAY_ADDRESS.", builder=False)
    verbose: bool = option(False, "Show Ray's own logs and the workers' output here (otherwise they stay in Ray's "
                                  "log files, /tmp/ray/session_latest/logs, and on a terminal what Ray prints "
                                  "itself goes to <tmp>/raytev-logs/driver-<pid>.log).", builder=False)


@dataclass(kw_only=True)
class BackendSection(Options):
    """Which framework runs the model: torch, or JAX/Flax (raytev.tevax)."""

    backend: str = option("torch", "torch, or jax: raytev's Flax encoders on Ray Train's JaxTrainer (TPUs, GPUs or "
                                   "CPUs; needs the jax extra). Both read and write the same Hugging Face folders.",
                          choices=("torch", "jax"))
    jax_cpu_devices: int = option(1, "JAX on CPUs: split each worker's cores into this many devices, each taking a "
                                     "share of the batch (as GPUs or TPU chips would).", at_least=1)


@dataclass(kw_only=True)
class InferenceSection(Options):
    """How a model encodes texts outside training."""

    per_device_eval_batch_size: int = option(32, "Texts per forward pass (on CPU small batches are fastest; "
                                                 "raise it on GPUs).", at_least=1,
                                             swap=("model", "reranker"))


@dataclass(kw_only=True)
class ActorPoolSection(Options):
    """The Ray actors that encode in parallel."""

    num_actors: int = option(1, "Model copies encoding in parallel (Ray actors; one GPU each with --use_gpu). 0 "
                                "encodes in this process, without Ray (debugging, small inputs).", at_least=0)
    cpus_per_actor: float = option(0.5, "CPUs each actor reserves (fractional, so small machines keep room for "
                                        "reading the data); it computes with the node's cores shared out.",
                                   at_least=0)


@dataclass(kw_only=True)
class IndexSection(Options):
    """Which FAISS index to build."""

    index_factory: str = option("Flat", "FAISS index_factory spec (inner product): Flat (exact), HNSW32, "
                                        "IVF4096,PQ64, ...; trained on a sample when the type needs it. IVFauto "
                                        "(IVFauto,PQ64, ...; `auto` alone: IVFauto,Flat) sizes the lists from the "
                                        "corpus: the smallest power of two >= 4 x sqrt(passages).")


@dataclass(kw_only=True)
class RetrievalSection(Options):
    """How many passages to retrieve per query, and how."""

    depth: int = option(1000, "Passages retrieved per query.", at_least=1)
    batch_size: int = option(4096, "Queries searched, then written to the run, at a time: memory holds this many "
                                   "x --depth hits whatever the query count (-1: all at once).")
    shard_search: bool = option(False, "Search embedding shards one at a time and merge their top-k: memory for "
                                       "one shard instead of the whole corpus, the same ranking.")
    search_workers: int = option(0, "Ray tasks that search the index parts at once (embedding shards, or saved "
                                    "index folders named by a glob), each a share of the parts, merged into the "
                                    "ranking one process gives; 0 searches in this process.", at_least=0)
    search_cpus_per_task: float = option(1, "CPUs each --search_workers task reserves; FAISS searches with that many "
                                            "threads.", at_least=0)
    search_parameters: str = option("", "FAISS search settings for ANN indexes, e.g. nprobe=32 (IVF) or efSearch=128 "
                                        "(HNSW); unset, FAISS's defaults (nprobe 1, efSearch 16) apply.")
