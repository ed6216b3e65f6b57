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
