"""Text to token ids as a ResolvedModel says (prompt, length, EOS), fingerprinting tokenizers, and tokenizing Arrow
text columns in parallel, streaming."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from raytev.compat import installed_version
from raytev.data.arrow_rows import count_arrow_rows, iter_arrow_chunks
from raytev.errors import RaytevError
from raytev.model.files import TOKENIZER_FILES
from raytev.model.resolved import ResolvedModel

TOKENS = pa.list_(pa.int32())
TOKENS_SCHEMA = pa.schema([("input_ids", TOKENS)])
# Below this many texts one process is faster than starting workers.
PARALLEL_TOKENIZE_MIN_ROWS = 50_000
TEXTS_PER_TASK = 1000
TASKS_AHEAD_PER_WORKER = 2  # enough to keep workers busy; more would only hold texts in memory


def tokenizer_fingerprint(directory: Path) -> str:
    """A hash of the tokenizer files and of the libraries that interpret them."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for package in ("tokenizers", "transformers"):
        if installed_version(package):
            digest.update(f"{package}=={installed_version(package)}".encode())
    return digest.hexdigest()


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the pad token, else EOS (decoder models), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


class TextTokenizer:
    """Turns a batch of texts into token ids: prefix, truncation to `max_len`, optional EOS (picklable)."""

    def __init__(self, tokenizer, max_len: int, prefix: str = "", append_eos: bool = False,
                 special_tokens: bool = True):
        if append_eos and tokenizer.eos_token_id is None:
            raise RaytevError("--append_eos_token was given but the tokenizer has no EOS token.")
        self.tokenizer, self.max_len, self.prefix, self.append_eos = tokenizer, max_len, prefix, append_eos
        self.special_tokens = special_tokens  # False: a bare segment of a cross-encoder's pair

    def __call__(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included."""
        if self.prefix:
            texts = [self.prefix + text for text in texts]
        ids = self.tokenizer(texts, max_length=self.max_len - 1 if self.append_eos else self.max_len, truncation=True,
                             padding=False, return_attention_mask=False, return_token_type_ids=False,
                             add_special_tokens=self.special_tokens)["input_ids"]
        if self.append_eos:
            # A tokenizer that ends every text with its EOS token itself gets no second one.
            eos = self.tokenizer.eos_token_id
            ids = [row if row and row[-1] == eos else row + [eos] for row in ids]
        return ids

    @classmethod
    def for_queries(cls, model: ResolvedModel, tokenizer) -> TextTokenizer:
        """How `model` tokenizes queries: its query prompt and length (bare segments for a cross-encoder, whose
        pairs get the EOS)."""
        return cls(tokenizer, model.query_max_len, model.settings.query_prefix,
                   model.append_eos_token and not model.pair_segments, not model.pair_segments)

    @classmethod
    def for_passages(cls, model: ResolvedModel, tokenizer) -> TextTokenizer:
        """How `model` tokenizes passages: its passage prompt and length."""
        return cls(tokenizer, model.passage_max_len, model.settings.passage_prefix,
                   model.append_eos_token and not model.pair_segments, not model.pair_segments)

    def token_array(self, texts: list[str]) -> pa.ListArray:
        """Token ids of each text as an Arrow `list<int32>` array."""
        return pa.array(self(texts), TOKENS)


class TokenStats:
    """The mean length of token lists and how many were cut at the maximum length, gathered batch by batch."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.rows = self.tokens = self.truncated = 0

    def add(self, tokens: pa.Array | pa.ChunkedArray) -> None:
        """Count one batch of token lists."""
        lengths = pc.list_value_length(tokens)
        self.rows += len(tokens)
        self.tokens += pc.sum(lengths).as_py() or 0
        self.truncated += pc.sum(pc.greater_equal(lengths, self.max_len)).as_py() or 0

    def as_dict(self, prefix: str = "") -> dict:
        """What a table's manifest records: `mean_tokens` and `truncated`, with `prefix` before each name."""
        mean = round(self.tokens / self.rows, 1) if self.rows else 0.0
        return {prefix + "mean_tokens": mean, prefix + "truncated": self.truncated}


def tokenize_arrow_texts(text_file: Path, text_tokenizer: TextTokenizer, tokens_file: Path, name: str,
                         num_proc: int | None = None) -> TokenStats:
    """Tokenize the `text` column of an Arrow stream file into `tokens_file`, an Arrow stream of `input_ids` in the
    same row order; memory holds a few batches of texts, however large the file."""
    rows = count_arrow_rows(text_file)
    if num_proc is None:
        num_proc = os.cpu_count() if rows >= PARALLEL_TOKENIZE_MIN_ROWS else 1
    texts = (chunk.column("text").to_pylist() for chunk in iter_arrow_chunks(text_file, TEXTS_PER_TASK, ["text"]))
    stats = TokenStats(text_tokenizer.max_len)
    # disable=None: no bar when output is not a terminal (logs, CI), where bars only add noise.
    with pa.OSFile(str(tokens_file), "wb") as sink, pa.ipc.new_stream(sink, TOKENS_SCHEMA) as writer, \
            tqdm(total=rows, desc=f"Tokenizing {name}", unit=" texts", mininterval=1.0, leave=False,
                 disable=None) as bar:
        for tokens in tokenize_in_order(text_tokenizer, texts, num_proc):
            writer.write_batch(pa.record_batch([tokens], schema=TOKENS_SCHEMA))
            stats.add(tokens)
            bar.update(len(tokens))
    return stats


def tokenize_in_order(text_tokenizer: TextTokenizer, batches: Iterable[list[str]], num_proc: int
                      ) -> Iterator[pa.ListArray]:
    """Token arrays of each batch of texts, in order; with num_proc > 1 from worker processes, a few tasks ahead."""
    if num_proc <= 1:
        yield from map(text_tokenizer.token_array, batches)
        return
    # Forked workers must not also run the tokenizer's own thread pool.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Arrow's allocator keeps freed memory for reuse; workers would inherit it (and count it as theirs).
    pa.default_memory_pool().release_unused()
    # fork, as datasets.map did: spawn would re-run a user's script that calls raytev without a __main__ guard.
    # The tokenizer reaches the workers through the fork, not pickled with every task.
    with multiprocessing.get_context("fork").Pool(num_proc, initializer=start_tokenizing_worker,
                                                  initargs=(text_tokenizer,)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(tokenize_in_worker, (batch,)))
            if len(pending) > TASKS_AHEAD_PER_WORKER * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


_worker_tokenizer: TextTokenizer | None = None  # set once in each worker process


def start_tokenizing_worker(text_tokenizer: TextTokenizer) -> None:
    """Pool initializer: keep the tokenizer for this worker's tasks."""
    global _worker_tokenizer
    _worker_tokenizer = text_tokenizer


def tokenize_in_worker(texts: list[str]) -> pa.ListArray:
    """One task in a worker: token ids of a batch of texts."""
    return _worker_tokenizer.token_array(texts)
