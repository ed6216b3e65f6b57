"""Hard-negative selection and the Tevatron JSONL that mining writes."""

from __future__ import annotations

import json

from helpers import make_config, write_jsonl

from raytev.config.sections import DataSection
from raytev.config.stages import MineConfig
from raytev.data.formats import Passage
from raytev.data.sources import resolve_source
from raytev.workflows.mining import select_negatives, write_groups

RANKED = [f"d{i}" for i in range(20)]
PASSAGES = {docid: Passage(docid, "", f"text of {docid}") for docid in RANKED}


def mining_window(**window):
    """A mining config with this rank window (the model and output are not used by select_negatives)."""
    return make_config(MineConfig, save_to="mined.jsonl", model_name_or_path="unused", **window)


def group(positives, answers=None):
    return {"query_id": "q1", "positive_docids": positives, "negative_docids": [], "answers": answers}


def test_positives_are_dropped_before_ranks_are_counted():
    options = mining_window(negative_rank_start=2, negative_rank_end=4, n_sample=10)
    # d0 and d2 are positives: the candidates are d1 d3 d4 d5 ..., ranks 2..4 of them are d3 d4 d5.
    assert select_negatives(group(["d0", "d2"]), RANKED, PASSAGES, options, seed=0) == ["d3", "d4", "d5"]


def test_sampling_is_seeded_keeps_rank_order_and_draws_from_the_window():
    options = mining_window(negative_rank_start=1, negative_rank_end=15, n_sample=5)
    chosen = select_negatives(group(["d0"]), RANKED, PASSAGES, options, seed=7)
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert set(chosen) <= set(RANKED[1:16])
    assert chosen == sorted(chosen, key=RANKED.index)
    assert chosen == select_negatives(group(["d0"]), RANKED, PASSAGES, options, seed=7)
    draws = {tuple(select_negatives(group(["d0"]), RANKED, PASSAGES, options, seed=s)) for s in range(5)}
    assert len(draws) > 1


def test_a_short_ranking_gives_what_it_has():
    options = mining_window(negative_rank_start=1, negative_rank_end=100, n_sample=30)
    assert select_negatives(group(["d1"]), ["d0", "d1", "d2"], PASSAGES, options, seed=0) == ["d0", "d2"]


def test_qa_passages_that_contain_an_answer_are_not_negatives():
    passages = dict(PASSAGES, d3=Passage("d3", "", "Paris is the capital of France"),
                    d5=Passage("d5", "", "the capital is PARIS."))
    options = mining_window(negative_rank_start=1, negative_rank_end=5, n_sample=10)
    chosen = select_negatives(group(["d0"], answers=["paris"]), RANKED, passages, options, seed=0)
    assert chosen == ["d1", "d2", "d4", "d6", "d7"]


def test_written_groups_are_tevatron_jsonl_original_then_mined(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"docid": d, "title": "", "text": f"text of {d}"}
                                                     for d in ("d0", "d1", "d2", "d3")])
    train = write_jsonl(tmp_path / "train.jsonl", [{
        "query_id": "q1", "query": "a question", "positive_passages": [{"docid": "d0", "text": "text of d0"}],
        "negative_passages": [{"docid": "d1", "text": "text of d1"}]}])
    source = resolve_source(DataSection(dataset_path=str(train), corpus_path=str(corpus)))
    rows = [{"query_id": "q1", "positive_docids": ["d0"], "negative_docids": ["d1"], "answers": None}]
    passages = {d: Passage(d, "", f"text of {d}") for d in ("d0", "d1", "d2", "d3")}
    output = tmp_path / "out" / "mined.jsonl"
    write_groups(output, source, rows, {"q1": ["d3", "d2"]}, passages, keep_original=True)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [[p["docid"] for p in g["negative_passages"]] for g in lines] == [["d1"], ["d3", "d2"]]
    assert all(g["query"] == "a question" and g["positive_passages"][0]["docid"] == "d0" for g in lines)
    assert lines[1]["negative_passages"][0] == {"docid": "d3", "title": "", "text": "text of d3"}
    write_groups(output, source, rows, {"q1": ["d3"]}, passages, keep_original=False)
    assert len(output.read_text().splitlines()) == 1
    assert sorted(p.name for p in output.parent.iterdir()) == ["mined.jsonl"]  # no temporary left


def test_the_run_is_mined_a_chunk_of_queries_at_a_time_as_if_read_whole(tmp_path):
    # 600 queries: more than one chunk of whole queries (256); each query's selection is the one the whole run gives.
    import numpy as np

    from raytev.data.runs import read_run, write_run
    from raytev.errors import ProblemLog
    from raytev.workflows.mining import mine_run

    rng = np.random.default_rng(0)
    query_ids = [f"q{number}" for number in range(600)]
    docids = np.array([rng.permutation(RANKED) for _ in query_ids], dtype=object)
    scores = -np.sort(rng.random((600, 20)), axis=1).astype(np.float32)
    write_run(tmp_path / "run.txt", query_ids, -scores, docids)
    rows = {query_id: dict(group([docids[number][3]]), query_id=query_id) for number, query_id in enumerate(query_ids)}
    rows["unranked"] = dict(group(["d1"]), query_id="unranked")
    options = mining_window(negative_rank_start=2, negative_rank_end=12, n_sample=4)
    mined = mine_run(tmp_path / "run.txt", rows, PASSAGES, options)
    whole = read_run(tmp_path / "run.txt", ProblemLog())
    assert mined["unranked"] == [] and len(mined) == 601
    for query_id in query_ids:
        expected = select_negatives(rows[query_id], [entry.docid for entry in whole[query_id]], PASSAGES, options,
                                    options.data.seed)
        assert mined[query_id] == expected and len(expected) == 4
