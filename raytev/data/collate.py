"""Batches for the model: each query's group sampled for the epoch, token lists padded to the batch's longest, as
numpy arrays that either backend takes (torch wraps them without a copy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raytev.config.sections import TrainingSection
from raytev.data.cache import TokenTable
from raytev.data.pairs import PairTemplate
from raytev.data.sampling import GroupSampler


def pad_token_lists(sequences: Sequence[Sequence[int]], pad_token_id: int, multiple_of: int = 8,
                    side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) as int64 arrays padded to the longest sequence, rounded up to `multiple_of`."""
    lengths = np.fromiter((len(sequence) for sequence in sequences), dtype=np.int64, count=len(sequences))
    longest = int(lengths.max(initial=1))
    width = -(-longest // multiple_of) * multiple_of
    input_ids = np.full((len(sequences), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, (sequence, length) in enumerate(zip(sequences, lengths)):
        start = 0 if side == "right" else width - length
        input_ids[row, start:start + length] = sequence
        attention_mask[row, start:start + length] = 1
    return input_ids, attention_mask


def teacher_scores(batch: dict[str, np.ndarray]):
    """Each row's (positive scores, negative scores) of a teacher, or None per row when the table has none."""
    if "positive_scores" not in batch:
        return [None] * len(batch["query_id"])
    return zip(batch["positive_scores"], batch["negative_scores"])


@dataclass(frozen=True)
class TrainingCollator:
    """Turns a batch of query rows into model tensors; passages are group-major, each group's positive first.

    Output: query_input_ids / query_attention_mask [B, Lq] and passage_input_ids / passage_attention_mask
    [B * train_group_size, Lp], so query i's positive is passage row i * train_group_size. With `pairs` (a
    cross-encoder's template) instead: pair_input_ids / pair_attention_mask (/ pair_token_type_ids)
    [B * train_group_size, L], query i's positive pair at row i * train_group_size. A table with a teacher's
    scores (positive_scores, negative_scores) adds teacher_scores [B, train_group_size], in the passages' order.
    """

    sampler: GroupSampler
    pad_token_id: int
    epoch: int = 0
    pad_to_multiple_of: int = 8
    padding_side: str = "right"
    pairs: PairTemplate | None = None

    def for_epoch(self, epoch: int) -> TrainingCollator:
        """The same collator sampling for another epoch."""
        return dataclasses.replace(self, epoch=epoch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model inputs for a batch of rows from a prepared queries table."""
        passages, teacher = [], []
        for query_id, positives, negatives, scores in zip(batch["query_id"], batch["positive_input_ids"],
                                                          batch["negative_input_ids"], teacher_scores(batch)):
            if scores is None:
                passages.extend(self.sampler.sample(str(query_id), positives, negatives, self.epoch))
                continue
            # The teacher's score travels with its passage through the sampling.
            group = self.sampler.sample(str(query_id), list(zip(positives, scores[0])), list(zip(negatives, scores[1])),
                                        self.epoch)
            passages.extend(passage for passage, _ in group)
            teacher.append([score for _, score in group])
        if self.pairs is not None:
            queries = [query for query in batch["input_ids"] for _ in range(self.sampler.train_group_size)]
            return {f"pair_{name}": array for name, array in
                    self.pairs.batch(queries, passages, self.pad_to_multiple_of, self.padding_side).items()}
        arrays = {}
        for prefix, sequences in (("query", batch["input_ids"]), ("passage", passages)):
            arrays[f"{prefix}_input_ids"], arrays[f"{prefix}_attention_mask"] = pad_token_lists(
                sequences, self.pad_token_id, self.pad_to_multiple_of, self.padding_side)
        if teacher:
            arrays["teacher_scores"] = np.asarray(teacher, dtype=np.float32)
        return arrays

    @classmethod
    def for_table(cls, queries: TokenTable, training: TrainingSection, seed: int, epoch: int = 0,
                  pairs: PairTemplate | None = None) -> TrainingCollator:
        """The collator for a prepared queries table, with the sampling and padding options of `training` (and a
        cross-encoder's pair template, to train a reranker)."""
        sampler = GroupSampler(training.train_group_size, seed, training.positive_passage_no_shuffle,
                               training.negative_passage_no_shuffle)
        return cls(sampler, queries.manifest["settings"]["pad_token_id"], epoch, training.pad_to_multiple_of,
                   training.padding_side, pairs)
