"""Per-class evaluation tables (r3rl.evaluation.classes) against counts and p-values worked out by hand."""

from __future__ import annotations

import json

import pytest

from r3rl.evaluation.classes import (HOLM, PASS, UNCLASSIFIED, compare_classes, holm_bonferroni, per_class_table,
                                     transition_table)


def rec(example_id, attempt_class, retry_ok, control_ok, *, sample=0, retry_class="", control_class="",
        attempt_ok=False):
    return {"example_id": example_id, "sample": sample, "attempt_ok": attempt_ok,
            "attempt_class": "" if attempt_ok else attempt_class,
            "retry_ok": retry_ok, "retry_class": "" if retry_ok else retry_class,
            "no_reflection_retry_ok": control_ok, "no_reflection_retry_class": "" if control_ok else control_class,
            "reflection_text": None if attempt_ok else "r"}


def one_sample_table():
    """Class a: 6 failures, retry passes 4, control 1, discordant: 3 retry-only, 0 control-only.
    Class b: 4 failures, retry 1, control 1, discordant 1 and 1. Class c: 8 failures, retry 8, control 0.
    Plus 5 first attempts that passed (no retry)."""
    rows = []
    for i, (r, c) in enumerate([(1, 0), (1, 0), (1, 1), (1, 0), (0, 0), (0, 0)]):
        rows.append(rec(f"a{i}", "a", bool(r), bool(c), retry_class="b", control_class="a"))
    for i, (r, c) in enumerate([(1, 0), (0, 1), (0, 0), (0, 0)]):
        rows.append(rec(f"b{i}", "b", bool(r), bool(c), retry_class="b", control_class="b"))
    for i in range(8):
        rows.append(rec(f"c{i}", "c", True, False, control_class="c"))
    for i in range(5):
        rows.append(rec(f"p{i}", "", None, None, attempt_ok=True))
    return rows


def test_holm_bonferroni_by_hand():
    # sorted 0.01, 0.02, 0.04 with m = 3: 3 * 0.01 = 0.03; max(0.03, 2 * 0.02) = 0.04; max(0.04, 0.04) = 0.04
    assert holm_bonferroni([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_bonferroni([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # min(1, 2 * 0.5), then the running max
    assert holm_bonferroni([]) == []


def test_per_class_table_by_hand():
    table = per_class_table(one_sample_table())
    assert table["failures"] == 18 and table["correction"] == HOLM
    assert list(table["classes"]) == ["c", "a", "b"]  # most frequent first
    a, b, c = (table["classes"][k] for k in "abc")
    assert (a["failures"], a["examples"], a["share"]) == (6, 6, pytest.approx(6 / 18))
    assert (a["retry"]["passes"], a["retry"]["rate"]) == (4, pytest.approx(4 / 6))
    assert (a["control"]["passes"], a["control"]["rate"]) == (1, pytest.approx(1 / 6))
    assert a["retry"]["interval"] == "Wilson score interval"
    # Exact McNemar, b = control only, c = retry only: class a b=0, c=3: p = 2 * (1/2)^3 = 0.25
    assert (a["gain"]["first_only"], a["gain"]["second_only"]) == (0, 3)
    assert a["gain"]["difference"] == pytest.approx(3 / 6)
    assert a["gain"]["p_value"] == pytest.approx(0.25)
    # class b: b=1, c=1: p = min(1, 2 * P(X <= 1 | n=2)) = min(1, 2 * 3/4) = 1
    assert b["gain"]["p_value"] == pytest.approx(1.0) and b["gain"]["difference"] == 0
    # class c: b=0, c=8: p = 2 / 2^8 = 0.0078125
    assert c["gain"]["p_value"] == pytest.approx(2 / 256)
    # Holm over 3 classes: sorted 0.0078125, 0.25, 1 -> 3 * 0.0078125, 2 * 0.25, max(0.5, 1)
    assert c["gain"]["p_holm"] == pytest.approx(3 * 2 / 256)
    assert a["gain"]["p_holm"] == pytest.approx(0.5)
    assert b["gain"]["p_holm"] == pytest.approx(1.0)
    json.dumps(table)  # results.json takes it as it is


def test_clustered_gain_by_hand():
    """Two samples of e1 fixed by the reflection only, one of e2, one sample of e3 fixed by the control
    only: per-example differences +2, +1, -1. Sign flips: sums 4, 2, 2, 0, 0, -2, -2, -4; |sum| >= 2 in 6 of 8."""
    rows = [rec("e1", "x", True, False, sample=0), rec("e1", "x", True, False, sample=1),
            rec("e2", "x", True, False), rec("e3", "x", False, True), rec("e3", "x", False, False, sample=1)]
    gain = per_class_table(rows)["classes"]["x"]["gain"]
    assert gain["test"].startswith("exact McNemar test clustered by example")
    assert gain["p_value"] == pytest.approx(6 / 8)
    assert gain["p_holm"] == pytest.approx(6 / 8)  # one class: nothing to correct
    assert gain["difference"] == pytest.approx((3 - 1) / 5)
    assert gain["examples"] == 3 and gain["pairs"] == 5


def test_without_control_there_is_no_gain_and_unclassified_is_named():
    rows = [rec("e1", "", True, None), rec("e2", "", False, None)]
    table = per_class_table(rows)
    row = table["classes"][UNCLASSIFIED]
    assert row["control"] is None and row["gain"] is None and row["retry"]["passes"] == 1


def test_transition_table_by_hand():
    t = transition_table(one_sample_table())
    # a: 4 pass, 2 retried into class b; b: 1 pass, 3 stay b; c: 8 pass
    assert t["from"] == ["c", "a", "b"] and t["to"] == [PASS, "b"]
    assert t["counts"] == {"c": {PASS: 8}, "a": {PASS: 4, "b": 2}, "b": {PASS: 1, "b": 3}}
    assert t["totals"] == {"c": 8, "a": 6, "b": 4}
    control = transition_table(one_sample_table(), retry="no_reflection_retry")
    assert control["counts"]["a"] == {PASS: 1, "a": 5} and control["counts"]["c"] == {"c": 8}
    with pytest.raises(ValueError, match="retry must be"):
        transition_table([], retry="third")


def test_compare_classes_by_hand():
    """Four examples, one sample each. Before: 2 fail no_call, 1 fails wrong_value, 1 passes.
    After: e1 and e2 pass, e3 still wrong_value, e4 now fails no_call."""
    before = [rec("e1", "no_call", True, None), rec("e2", "no_call", False, None, retry_class="no_call"),
              rec("e3", "wrong_value", False, None, retry_class="wrong_value"), rec("e4", "", None, None, attempt_ok=True)]
    after = [rec("e1", "", None, None, attempt_ok=True), rec("e2", "", None, None, attempt_ok=True),
             rec("e3", "wrong_value", True, None), rec("e4", "no_call", False, None, retry_class="no_call")]
    out = compare_classes(before, after)
    assert out["trials"] == 4 and list(out["first_attempt"]) == [PASS, "no_call", "wrong_value"]
    passed, no_call, wrong = (out["first_attempt"][k] for k in (PASS, "no_call", "wrong_value"))
    # pass: before only e4, after e1, e2: discordant 1 (before only) and 2 (after only): p = min(1, 2 * 4/8) = 1
    assert (passed["before"], passed["after"]) == (1, 2)
    assert (passed["gain"]["first_only"], passed["gain"]["second_only"]) == (1, 2)
    assert passed["gain"]["p_value"] == pytest.approx(1.0) and passed["gain"]["difference"] == pytest.approx(0.25)
    # no_call: before e1, e2; after e4: discordant 2 and 1; wrong_value: e3 both times, nothing discordant
    assert (no_call["before"], no_call["after"], no_call["gain"]["difference"]) == (2, 1, pytest.approx(-0.25))
    assert wrong["gain"]["p_value"] == 1.0 and wrong["gain"]["p_holm"] == 1.0
    assert out["retry"]["no_call"]["before"]["passes"] == 1 and out["retry"]["no_call"]["after"]["passes"] == 0
    assert out["retry"]["wrong_value"]["after"]["rate"] == 1.0
    json.dumps(out)


def test_compare_classes_refuses_different_trials():
    before = [rec("e1", "x", True, None), rec("e2", "x", True, None)]
    after = [rec("e1", "x", True, None), rec("e3", "x", True, None)]
    with pytest.raises(ValueError, match=r"different trials \(1 only before, 1 only after, e.g. example 'e2'"):
        compare_classes(before, after)
    with pytest.raises(ValueError, match="has trial .* twice"):
        compare_classes(before + before[:1], before)
