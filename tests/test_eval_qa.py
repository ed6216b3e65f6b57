"""QA answer matching as DPR does it (tokens, accents, regex) and top-k retrieval accuracy computed by hand."""

from __future__ import annotations

import random
import sys
import unicodedata

import pytest

from raytev.config.stages import EvalConfig
from raytev.errors import RaytevError
from raytev.eval.files import evaluate_files
from raytev.eval.qa import answer_matcher, has_answer, qa_top_k_accuracy
from raytev.eval.qa import simple_tokens


# --- the tokenizer ----------------------------------------------------------------------------------------

def test_simple_tokens_are_alphanumeric_runs_or_single_symbols():
    assert simple_tokens("Hello, world! U.S. 3.14 snake_case naïve «quoted»") == [
        "Hello", ",", "world", "!", "U", ".", "S", ".", "3", ".", "14", "snake", "_", "case", "naïve",
        "«", "quoted", "»"]


def test_combining_marks_stay_inside_the_word():
    decomposed = unicodedata.normalize("NFD", "café au lait")
    assert simple_tokens(decomposed) == ["cafe\u0301", "au", "lait"]


def test_simple_tokens_match_dprs_regex_pattern():
    regex = pytest.importorskip("regex")
    dpr = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
                        flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)
    # Code points assigned in Python's Unicode database (the `regex` module may know a newer Unicode).
    assigned = [code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) not in ("Cn", "Cs")]
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(chr(rng.choice(assigned)) if rng.random() < 0.5 else rng.choice(" ,.a1é\u0301-\t\u00a0")
                       for _ in range(40))
        assert simple_tokens(text) == [match.group() for match in dpr.finditer(text)], repr(text)


# --- has_answer -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answers, expected", [
    ("The capital of France is Paris.", ["Paris"], True),  # a word, next to punctuation
    ("PARIS is large", ["paris"], True),  # case does not matter
    ("paris is large", ["PaRiS"], True),
    ("The category of animals", ["cat"], False),  # only whole tokens match
    ("A cat-like creature", ["cat"], True),  # "-" is a token of its own
    ("He was born in New York City in 1950", ["new york"], True),  # a contiguous token sequence
    ("He was born in New York City in 1950", ["York New"], False),  # in that order
    ("He was born in New Jersey near York", ["new york"], False),  # contiguous only
    ("Born in St. Louis, Missouri.", ["St. Louis"], True),
    ("Born in St. Louis, Missouri.", ["Louis Missouri"], False),  # the comma is a token between them
    ("Served in the U.S. Army", ["U.S."], True),
    ("Served in the US Army", ["U.S."], False),
    ("In 1969, Apollo 11 landed", ["1969"], True),  # numbers are tokens
    ("In 1969, Apollo 11 landed", ["196"], False),
    ("pi is 3.14159", ["3.14"], False),  # 3 . 14 is not 3 . 14159
    ("pi is 3.14159", ["3.14159"], True),
    ("No answer here", ["Lyon", "here"], True),  # any of the answers
    ("No answer here", ["Lyon", "Marseille"], False),
    ("Café de Flore", ["Cafe\u0301 de Flore"], True),  # precomposed vs decomposed: same after NFD
    ("Cafe\u0301 de Flore", ["Café"], True),
    ("Café de Flore", ["Cafe"], False),  # DPR keeps accents: café is not cafe
    ("Zoë Saldaña stars", ["zoë saldaña"], True),
    ("Anything at all", [""], False),  # an empty answer matches nothing (DPR would match every passage)
    ("Anything at all", [], False),
])
def test_has_answer(text, answers, expected):
    assert has_answer(text, answers) is expected


@pytest.mark.parametrize("text, patterns, expected", [
    ("apollo 11 landed", [r"Apollo\s+1[01]"], True),  # case-insensitive regex
    ("apollo 12 landed", [r"Apollo\s+1[01]"], False),
    ("The category of animals", ["cat"], True),  # a regex searches characters, not tokens
    ("first line\nParis\nlast line", ["^paris$"], True),  # multi-line: ^ and $ match at line breaks
    ("Paris, France", ["^paris$"], False),
    ("Café de Flore", ["cafe\u0301"], True),  # text and pattern both NFD-normalized
    ("Café de Flore", ["café"], True),
    ("Lyon or Paris", ["marseille", "par(is|ma)"], True),
])
def test_has_answer_regex(text, patterns, expected):
    assert has_answer(text, patterns, regex=True) is expected


def test_an_invalid_pattern_is_an_error_naming_it():
    with pytest.raises(RaytevError, match=r"answer pattern 'Apollo \(11' is not a valid regular expression"):
        has_answer("apollo 11", ["Apollo (11"], regex=True)


def test_one_string_as_the_answers_is_refused():
    with pytest.raises(TypeError, match="list of strings"):
        has_answer("the category", "cat")


def test_a_matcher_prepares_answers_once_for_many_passages():
    matches = answer_matcher(["New York"])
    assert [matches(text) for text in ["new york city", "york new", "NEW  YORK"]] == [True, False, True]


# --- top-k accuracy ---------------------------------------------------------------------------------------

PASSAGES = {
    "p1": "Paris is the capital of France.",
    "p2": "The Eiffel Tower is in Paris.",
    "p3": "Berlin is the capital of Germany.",
    "p4": "Apollo 11 landed in 1969.",
    "p5": "Nothing useful here.",
}
ANSWERS = {
    "q1": ["Eiffel Tower"],  # only p2
    "q2": ["1969"],  # only p4
    "q3": ["Paris"],  # p1 and p2
    "q4": ["Tokyo"],  # nowhere
    "q5": [],  # no answer: skipped
    "q6": ["Berlin"],  # not in the run: a miss
}
RUN = {
    "q1": [("p1", 0.9), ("p2", 0.8), ("p3", 0.7)],  # first hit at rank 2
    "q2": [("p3", 0.9), ("p1", 0.8), ("p4", 0.7), ("p5", 0.6)],  # first hit at rank 3
    "q3": [("p1", 0.9), ("p3", 0.8)],  # hit at rank 1
    "q4": [("p1", 0.9), ("p2", 0.8), ("p3", 0.7)],  # never
    "q5": [("p3", 0.9)],  # skipped: no answers
    "q7": [("p3", 0.9)],  # not among the answered queries: ignored
}


def test_top_k_accuracy_by_hand():
    accuracy = qa_top_k_accuracy(RUN, ANSWERS, PASSAGES, ks=(1, 2, 3, 4))
    # Answered queries: q1, q2, q3, q4, q6 -> 5. Hits within top 1: q3; top 2: q3, q1; top 3 and 4: q3, q1, q2.
    assert accuracy == pytest.approx({"Top-1": 1 / 5, "Top-2": 2 / 5, "Top-3": 3 / 5, "Top-4": 3 / 5}, abs=1e-9)
    assert list(accuracy) == ["Top-1", "Top-2", "Top-3", "Top-4"]
    assert (accuracy.queries, accuracy.missing_queries, accuracy.missing_scored_zero) == (5, 1, True)


def test_default_cut_offs_and_a_text_function():
    accuracy = qa_top_k_accuracy(RUN, ANSWERS, PASSAGES.__getitem__)
    assert accuracy == pytest.approx({"Top-1": 1 / 5, "Top-5": 3 / 5, "Top-20": 3 / 5, "Top-100": 3 / 5}, abs=1e-9)


def test_top_k_accuracy_in_regex_mode():
    answers = {"q1": [r"eiffel\s+tower"], "q2": [r"19[0-9]{2}"]}
    accuracy = qa_top_k_accuracy(RUN, answers, PASSAGES, ks=(1, 3), regex=True)
    assert accuracy == pytest.approx({"Top-1": 0.0, "Top-3": 1.0}, abs=1e-9)


def test_ranks_come_from_scores_not_list_order():
    run = {"q3": [("p3", 0.1), ("p1", 0.9)]}  # p1 is best despite being listed second
    assert qa_top_k_accuracy(run, {"q3": ["Paris"]}, PASSAGES, ks=(1,)) == {"Top-1": 1.0}


def test_qa_errors():
    with pytest.raises(RaytevError, match="passage 'p9', which the passage texts lack"):
        qa_top_k_accuracy({"q1": [("p9", 1.0)]}, {"q1": ["x"]}, PASSAGES, ks=(1,))
    with pytest.raises(RaytevError, match="share no query"):
        qa_top_k_accuracy({"other": [("p1", 1.0)]}, {"q1": ["x"]}, PASSAGES, ks=(1,))
    with pytest.raises(RaytevError, match="no query has an answer"):
        qa_top_k_accuracy(RUN, {"q1": []}, PASSAGES, ks=(1,))
    with pytest.raises(RaytevError, match="positive whole numbers"):
        qa_top_k_accuracy(RUN, ANSWERS, PASSAGES, ks=(0, 5))



def write_qa_files(tmp_path, corpus_lines):
    """Questions with answers, a corpus and a run, as `raytev eval --qa_answers --qa_corpus` reads them."""
    from helpers import write_jsonl

    questions = write_jsonl(tmp_path / "questions.jsonl", [
        {"query_id": "q1", "query": "capital of France?", "answers": ["Paris"]},
        {"query_id": "q2", "query": "tallest mountain?", "answers": ["Everest"]}])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_lines)
    run = tmp_path / "run.txt"
    run.write_text("q1\tp1\t0.9\nq1\tp2\t0.8\nq2\tp3\t0.5\n")
    return EvalConfig(run=str(run), qa_answers=str(questions), qa_corpus=str(corpus), top_k="1,2")


def test_qa_accuracy_from_files(tmp_path):
    args = write_qa_files(tmp_path, [
        {"docid": "p1", "title": "Paris", "text": "Lyon is a city."},  # DPR matches the text, not the title
        {"docid": "p2", "title": "", "text": "Paris is the capital."},
        {"docid": "p3", "title": "", "text": "Everest is the tallest."},
        {"docid": "p4", "title": "", "text": "Paris, never retrieved."}])
    # q1: answer first at rank 2 (p2); q2: at rank 1 (p3).
    assert evaluate_files(args) == pytest.approx({"Top-1": 0.5, "Top-2": 1.0}, abs=1e-9)


def test_a_broken_qa_corpus_line_is_located(tmp_path):
    args = write_qa_files(tmp_path, [{"docid": "p1", "text": "x"}, '{"docid": "p2", "text": "Paris"',
                                     {"docid": "p3", "text": "Everest"}])
    with pytest.raises(RaytevError, match=r"corpus.jsonl:2: invalid JSON"):
        evaluate_files(args)
