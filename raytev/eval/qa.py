"""Open-domain QA retrieval accuracy as DPR measures it: does a top-k passage contain an answer."""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from functools import cache

from raytev.data.runs import Run, ranked_docids
from raytev.errors import RaytevError
from raytev.eval.metrics import Evaluation

DEFAULT_KS = (1, 5, 20, 100)


def has_answer(text: str, answers: Sequence[str], regex: bool = False) -> bool:
    """Whether a passage contains one of the answers, by DPR's `has_answer` (`dpr/data/qa_validation.py`)."""
    return answer_matcher(answers, regex)(text)


def answer_matcher(answers: Sequence[str], regex: bool = False) -> Callable[[str], bool]:
    """A test `text -> bool` for these answers, preparing them once for many passages (DPR's `has_answer`).

    Text and answers are Unicode NFD-normalized. By default an answer matches when its lowercased token
    sequence (DPR's SimpleTokenizer) occurs contiguously in the passage's, so "cat" does not match "category"
    and accents matter ("café" is not "cafe"). With `regex=True` each answer is a pattern searched in the text,
    case-insensitively (CuratedTREC's answers are patterns).
    Unlike DPR, an answer with no tokens (empty or blank) matches nothing (DPR would match every passage),
    and a pattern that does not compile is an error (DPR counts it as a miss).
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a list of strings, not one string")
    if regex:
        return _regex_matcher([_compile(answer) for answer in answers])
    sequences = [tokens for tokens in (_lower_tokens(answer) for answer in answers) if tokens]
    return _token_matcher(sequences)


def _lower_tokens(text: str) -> list[str]:
    return [token.lower() for token in simple_tokens(unicodedata.normalize("NFD", text))]


def _token_matcher(sequences: list[list[str]]) -> Callable[[str], bool]:
    def matches(text: str) -> bool:
        tokens = _lower_tokens(text)
        return any(tokens[start:start + len(sequence)] == sequence
                   for sequence in sequences for start in range(len(tokens) - len(sequence) + 1))
    return matches


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(unicodedata.normalize("NFD", pattern), flags=re.IGNORECASE | re.UNICODE | re.MULTILINE)
    except re.error as error:
        raise RaytevError(f"answer pattern {pattern!r} is not a valid regular expression ({error}); "
                          f"fix the pattern, or match answers as plain text (regex off)") from None


def _regex_matcher(patterns: list[re.Pattern]) -> Callable[[str], bool]:
    def matches(text: str) -> bool:
        normalized = unicodedata.normalize("NFD", text)
        return any(pattern.search(normalized) for pattern in patterns)
    return matches


def qa_top_k_accuracy(run: Run, answers_by_query: Mapping[str, Sequence[str]],
                      passage_text: Callable[[str], str] | Mapping[str, str],
                      ks: Sequence[int] = DEFAULT_KS, regex: bool = False) -> Evaluation:
    """{"Top-k": fraction of questions with an answer in their top k passages} (DPR's retriever accuracy).

    Averaged over the queries that have answers; queries without answers are skipped, and answered queries
    the run lacks count as misses (reported as `missing_queries`). `passage_text` gives a docid's text
    (DPR matches the passage text, not its title).
    """
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise RaytevError(f"top-k cut-offs must be positive whole numbers, got {list(ks)}")
    ranked = ranked_docids(run)
    answered = {str(query_id): answers for query_id, answers in answers_by_query.items() if answers}
    if not answered:
        raise RaytevError("no query has an answer: nothing to score (are the answers loaded from the right file?)")
    if not answered.keys() & ranked.keys():
        raise RaytevError(f"the run and the answers share no query (the run has {len(ranked)} queries, the answers "
                          f"{len(answered)}): check that both come from the same dataset and split")
    text_of = _text_lookup(passage_text)
    depth = max(ks)
    first_hits = [_first_hit(ranked.get(query_id, [])[:depth], answer_matcher(answers, regex), text_of, query_id)
                  for query_id, answers in answered.items()]
    accuracy = {f"Top-{k}": sum(hit is not None and hit < k for hit in first_hits) / len(first_hits) for k in ks}
    return Evaluation(accuracy, queries=len(answered), missing_queries=len(answered.keys() - ranked.keys()),
                      missing_scored_zero=True)


def _first_hit(docids: list[str], matches: Callable[[str], bool], text_of: Callable[[str, str], str],
               query_id: str) -> int | None:
    """The 0-based rank of the first passage holding an answer, or None."""
    return next((rank for rank, docid in enumerate(docids) if matches(text_of(docid, query_id))), None)


def _text_lookup(passage_text: Callable[[str], str] | Mapping[str, str]) -> Callable[[str, str], str]:
    def text_of(docid: str, query_id: str) -> str:
        try:
            return passage_text[docid] if isinstance(passage_text, Mapping) else passage_text(docid)
        except KeyError:
            raise RaytevError(f"the run gives query {query_id!r} passage {docid!r}, which the passage texts lack: "
                              f"was the run searched over this corpus?") from None
    return text_of


# DPR's SimpleTokenizer (from DrQA) in the standard library: runs of letters, digits and marks, or one other symbol.

def simple_tokens(text: str) -> list[str]:
    """The tokens of a text as DPR's SimpleTokenizer finds them (case kept)."""
    return _token_pattern().findall(text)


@cache
def _token_pattern() -> re.Pattern:
    # DPR's pattern is `[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]` in the third-party `regex` module. The standard `re`
    # has no \p{..} classes (and its \w differs: it has "_" but no marks), so the same classes are spelled out
    # from the Unicode database, once per process (a fraction of a second).
    word, space_or_control = _character_classes({"L": 0, "N": 0, "M": 0, "Z": 1, "C": 1}, count=2)
    return re.compile(f"[{word}]+|[^{space_or_control}]")


def _character_classes(class_of_category: dict[str, int], count: int) -> list[str]:
    """Regex character-class bodies, one per class, holding the code points whose major category maps to it."""
    ranges: list[list[list[int]]] = [[] for _ in range(count)]
    category = unicodedata.category
    for code in range(sys.maxunicode + 1):
        index = class_of_category.get(category(chr(code))[0])
        if index is None:
            continue
        spans = ranges[index]
        if spans and spans[-1][1] == code - 1:
            spans[-1][1] = code
        else:
            spans.append([code, code])
    return ["".join(f"\\U{low:08x}" if low == high else f"\\U{low:08x}-\\U{high:08x}" for low, high in spans)
            for spans in ranges]
