"""Text to token ids as a ResolvedModel says (prompt, length, EOS), fingerprinting tokenizers, and tokenizing Arrow
text columns in parallel."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa

from raytev.data.model_folder import TOKENIZER_FILES, ResolvedModel
from raytev.errors import RaytevError

# Below this many texts one process is faster than starting workers.
PARALLEL_TOKENIZE_MIN_ROWS = 50_000


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


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the pad token, else EOS (decoder models), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


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
            # A tokenizer that ends every text with its EOS token itself gets no second one.
            eos = self.tokenizer.eos_token_id
            ids = [row if row and row[-1] == eos else row + [eos] for row in ids]
        return ids

    @classmethod
    def for_queries(cls, model: ResolvedModel, tokenizer) -> TextTokenizer:
        """How `model` tokenizes queries: its query prompt and length."""
        return cls(tokenizer, model.query_max_len, model.query_prefix, model.append_eos_token)

    @classmethod
    def for_passages(cls, model: ResolvedModel, tokenizer) -> TextTokenizer:
        """How `model` tokenizes passages: its passage prompt and length."""
        return cls(tokenizer, model.passage_max_len, model.passage_prefix, model.append_eos_token)

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
