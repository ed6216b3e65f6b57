"""Query-passage pairs for a cross-encoder, joined from tokens already in the cache.

A reranker's queries and passages are tokenized as bare segments (no special tokens, each cut at the pair length);
`PairTemplate` puts them together as the tokenizer's own pair template does ([CLS] q [SEP] p [SEP] for BERT,
<s> q </s></s> p </s> for RoBERTa, ...) and truncates the longer segment first, one token at a time, as
`tokenizer(query, passage, truncation=True)` (Tevatron's reranker and sentence-transformers' CrossEncoder) does:
the same ids, with nothing tokenized at training or reranking time, whenever the query is shorter than the pair
length (a longer one is cut in the cache first, and a tie of two over-long segments may then split one token
differently). Picklable: workers and actors get it whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raytev.errors import RaytevError

# Two probe texts whose bare tokens are looked for in the tokenizer's pair encoding, to read its template.
PROBES = ("query words", "passage text here")


@dataclass(frozen=True)
class PairTemplate:
    """Special tokens before, between and after the two segments, their token types, and the pair length."""

    before: tuple[int, ...]
    between: tuple[int, ...]
    after: tuple[int, ...]
    types: tuple[int, int, int, int, int]  # token type of: before, the query, between, the passage, after
    max_len: int
    pad_token_id: int = 0
    append_eos: int | None = None  # an EOS id put last (decoder rerankers trained so), or None
    token_types: bool = True  # whether the model takes token_type_ids

    @classmethod
    def from_tokenizer(cls, tokenizer, max_len: int, append_eos: bool = False, pad_token_id: int = 0
                       ) -> PairTemplate:
        """Read the tokenizer's pair template off a probe pair; raise a RaytevError if it is not prefix, query,
        middle, passage, suffix."""
        query, passage = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in PROBES)
        encoded = tokenizer(*PROBES, return_token_type_ids=True)
        ids, types = encoded["input_ids"], encoded.get("token_type_ids") or [0] * len(encoded["input_ids"])
        start = find_run(ids, query, 0)
        end = find_run(ids, passage, start + len(query)) if start >= 0 else -1
        if start < 0 or end < 0:
            raise RaytevError(f"the tokenizer {type(tokenizer).__name__} does not encode a pair as its two texts' "
                              "own tokens with special tokens around them; raytev cannot build reranker pairs "
                              "from cached tokens for it.")
        middle = start + len(query)
        tail = end + len(passage)
        if append_eos and tokenizer.eos_token_id is None:
            raise RaytevError("--append_eos_token was given but the tokenizer has no EOS token.")
        eos = tokenizer.eos_token_id if append_eos else None
        if eos is not None and ids[-1:] == [eos]:
            eos = None  # the template ends with EOS already
        special = len(ids) - len(query) - len(passage) + (eos is not None)
        if max_len <= special + 1:
            raise RaytevError(f"--rerank_max_len {max_len} leaves no room for text after the {special} special "
                              "tokens of a pair: raise it.")
        return cls(tuple(ids[:start]), tuple(ids[middle:end]), tuple(ids[tail:]),
                   (types[0] if start else 0, types[start], types[middle - 1] if end > middle else types[start],
                    types[end], types[-1] if len(ids) > tail else types[end]),
                   max_len, pad_token_id, eos, "token_type_ids" in tokenizer.model_input_names)

    @property
    def special_tokens(self) -> int:
        """Tokens of a pair that are not text."""
        return len(self.before) + len(self.between) + len(self.after) + (self.append_eos is not None)

    def kept_lengths(self, query: int, passage: int) -> tuple[int, int]:
        """How many tokens of each segment fit: the longer is cut first until both are as long (the 'longest_first'
        truncation of Hugging Face tokenizers)."""
        budget = self.max_len - self.special_tokens
        excess = query + passage - budget
        if excess <= 0:
            return query, passage
        longer, shorter = max(query, passage), min(query, passage)
        if longer - excess >= shorter:  # only the longer one is cut
            return (query - excess, passage) if query > passage else (query, passage - excess)
        half = budget // 2  # both meet in the middle; an odd budget's extra token stays with the longer
        return (budget - half, half) if query > passage else (half, budget - half)

    def join(self, query: Sequence[int], passage: Sequence[int]) -> tuple[list[int], list[int]]:
        """(input_ids, token_type_ids) of one pair."""
        keep_query, keep_passage = self.kept_lengths(len(query), len(passage))
        before, in_query, between, in_passage, after = self.types
        ids = [*self.before, *query[:keep_query], *self.between, *passage[:keep_passage], *self.after]
        types = ([before] * len(self.before) + [in_query] * keep_query + [between] * len(self.between)
                 + [in_passage] * keep_passage + [after] * len(self.after))
        if self.append_eos is not None:
            ids.append(self.append_eos)
            types.append(after)
        return ids, types

    def batch(self, queries: Sequence[Sequence[int]], passages: Sequence[Sequence[int]], multiple_of: int = 8,
              side: str = "right") -> dict[str, np.ndarray]:
        """Model inputs of pairs (queries[i], passages[i]), padded to the longest rounded up to `multiple_of`:
        input_ids, attention_mask and, where the model takes them, token_type_ids (int64 arrays)."""
        joined = [self.join(query, passage) for query, passage in zip(queries, passages, strict=True)]
        longest = max((len(ids) for ids, _ in joined), default=1)
        width = -(-longest // multiple_of) * multiple_of
        arrays = {name: np.zeros((len(joined), width), dtype=np.int64)
                  for name in ("input_ids", "attention_mask", "token_type_ids")}
        arrays["input_ids"].fill(self.pad_token_id)
        for row, (ids, types) in enumerate(joined):
            start = 0 if side == "right" else width - len(ids)
            arrays["input_ids"][row, start:start + len(ids)] = ids
            arrays["attention_mask"][row, start:start + len(ids)] = 1
            arrays["token_type_ids"][row, start:start + len(ids)] = types
        if not self.token_types:
            del arrays["token_type_ids"]
        return arrays


def find_run(values: Sequence[int], run: Sequence[int], start: int) -> int:
    """Where `run` first occurs in `values` at or after `start`, or -1."""
    for position in range(start, len(values) - len(run) + 1):
        if list(values[position:position + len(run)]) == list(run):
            return position
    return -1
