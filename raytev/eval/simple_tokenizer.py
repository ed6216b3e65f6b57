"""DPR's SimpleTokenizer (from DrQA) in the standard library: runs of letters, digits and marks, or one other symbol."""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache


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
