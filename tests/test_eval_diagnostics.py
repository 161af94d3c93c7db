"""Reflection diagnostics (r3rl.evaluation.diagnostics) against figures worked out by hand."""

from __future__ import annotations

import json
import time

import pytest

from r3rl.evaluation.diagnostics import (LENGTH_EDGES, distinct_n, duplicates, length_summary, normalize,
                                         record_diagnostics, reflection_diagnostics)


def test_length_summary_by_hand():
    s = length_summary([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])  # sorted: 1 1 2 3 3 4 5 5 6 9
    assert (s["n"], s["min"], s["max"]) == (10, 1, 9)
    assert s["median"] == 3.5  # (3 + 4) / 2
    assert s["p90"] == 6  # nearest rank: the 9th of 10
    assert s["mean"] == pytest.approx(3.9)
    assert s["histogram"] == {"edges": list(LENGTH_EDGES), "counts": [9, 1, 0, 0, 0, 0, 0, 0, 0]}
    edges = length_summary([0, 7, 8, 15, 16, 2000])["histogram"]["counts"]
    assert edges == [2, 2, 1, 0, 0, 0, 0, 0, 1]  # [0, 8), [8, 16), [16, 32), ..., [1024, inf)
    empty = length_summary([])
    assert empty["n"] == 0 and empty["median"] is None and sum(empty["histogram"]["counts"]) == 0


def test_distinct_n_by_hand():
    words = [["a", "b", "a"], ["a", "b"]]
    assert distinct_n(words, 1) == pytest.approx(2 / 5)  # a, b among 5 words
    assert distinct_n(words, 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(words, 3) == 1.0  # (a b a) only
    assert distinct_n([["a"]], 2) is None


def test_duplicates_by_hand():
    texts = ["Let me add column by column.", "let me  add column by column.", "LET ME ADD COLUMN BY COLUMN.",
             "Carry the one.", "carry the one.", "Check the tens."]
    d = duplicates(texts, top=5)
    assert d["distinct"] == 3
    assert d["duplicate_share"] == pytest.approx(1 - 3 / 6)
    assert d["repeated_share"] == pytest.approx(5 / 6)  # all but "Check the tens."
    assert d["most_repeated"] == [{"count": 3, "text": "Let me add column by column."},
                                  {"count": 2, "text": "Carry the one."}]
    assert duplicates(texts, top=1)["most_repeated"] == [{"count": 3, "text": "Let me add column by column."}]
    assert normalize("  A\tb \n C ") == "a b c"


def test_reflection_diagnostics_by_hand():
    texts = ["add the ones first", "Add the ones  first", "carry the one", "check the tens digit"]
    d = reflection_diagnostics(texts, retry_ok=[True, False, True, True])
    assert d["n"] == 4 and d["length"]["unit"] == "words"
    assert (d["length"]["min"], d["length"]["median"], d["length"]["max"]) == (3, 4, 4)
    # 15 words; distinct: add the ones first carry one check tens digit = 9
    assert d["distinct_1"] == pytest.approx(9 / 15)
    # bigrams: (add the)(the ones)(ones first) twice, (carry the)(the one), (check the)(the tens)(tens digit):
    # 3 + 3 + 2 + 3 = 11, of which 3 + 2 + 3 = 8 distinct
    assert d["distinct_2"] == pytest.approx(8 / 11)
    # trigrams: (add the ones)(the ones first) twice, (carry the one), (check the tens)(the tens digit): 5 of 7
    assert d["distinct_3"] == pytest.approx(5 / 7)
    assert d["duplicate_share"] == pytest.approx(1 / 4) and d["repeated_share"] == pytest.approx(2 / 4)
    assert d["retry_success"]["repeated"]["passes"] == 1 and d["retry_success"]["repeated"]["rate"] == 0.5
    assert d["retry_success"]["unique"]["passes"] == 2 and d["retry_success"]["unique"]["rate"] == 1.0
    with_ids = reflection_diagnostics(texts, token_ids=[[1, 2], [1, 2, 3], [4], [5, 6, 7, 8, 9]])
    assert with_ids["length"]["unit"] == "tokens" and with_ids["length"]["median"] == 2.5
    assert with_ids["retry_success"] is None
    json.dumps(d)
    with pytest.raises(ValueError, match="4 reflections but 3 retry outcomes"):
        reflection_diagnostics(texts, retry_ok=[True, True, True])


def test_a_collapsed_set_reads_as_collapsed():
    template = "Let me add column by column: ones, then tens, carrying the one."
    collapsed = reflection_diagnostics([template] * 9 + ["The tens digit was wrong."])
    varied = reflection_diagnostics([f"step {i}: check digit {i} and carry {i % 3}" for i in range(10)])
    assert collapsed["duplicate_share"] == pytest.approx(0.8) and collapsed["most_repeated"][0]["count"] == 9
    assert collapsed["distinct_2"] < varied["distinct_2"]


def test_record_diagnostics_reads_failed_first_attempts():
    records = [{"attempt_ok": True, "reflection_text": None, "retry_ok": None},
               {"attempt_ok": False, "reflection_text": "carry", "retry_ok": True},
               {"attempt_ok": False, "reflection_text": "carry", "retry_ok": False}]
    d = record_diagnostics(records)
    assert d["n"] == 2 and d["retry_success"]["repeated"]["n"] == 2


def test_cheap_enough_for_every_training_step():
    texts = [f"Let me add column by column. The ones digit {i % 10} plus {i % 7} carries {i % 2}." * 3
             for i in range(512)]
    start = time.perf_counter()
    reflection_diagnostics(texts, retry_ok=[i % 2 == 0 for i in range(512)])
    assert time.perf_counter() - start < 0.5  # a few tens of milliseconds on a slow core
