"""Which failures a reflection fixes: per-class retry success, its gain over the control, transitions.

Pure functions over evaluation records: one dict per (example, sample) trial with

    example_id, sample                       which trial
    attempt_ok, attempt_class                the first attempt's verdict (class "" when it passed
                                             or the task does not classify)
    retry_ok, retry_class                    the retry after a reflection (None when there was none)
    no_reflection_retry_ok, ..._class        the control: a retry after only "try again" (None when
                                             the evaluation ran no control)
    reflection_text                          the reflection (diagnostics.py reads it)

`per_class_table` groups the failed first attempts by class and gives, per class, the count,
the retry success after reflection, the retry success of the control, and the gain (reflection
minus control) with a paired test: the exact McNemar test, or its clustered form (a sign-flip
test over examples) when an example has several samples (`r3rl.evaluation.stats`). With one test
per class, some p-values fall under 0.05 by chance alone, so each p-value is also given adjusted
by Holm-Bonferroni over the classes tested (`holm_bonferroni`): it controls the chance of any false
positive among them (the family-wise error rate) under any dependence between the tests, like
Bonferroni, and never rejects less than Bonferroni does.

`transition_table` counts where each failure class went on the retry ("pass" or the retry's
class); `compare_classes` compares two evaluations of the same trials (before vs after training)
class by class. Everything returned is JSON-serialisable (dicts, lists, numbers, strings).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from r3rl.evaluation.stats import clustered_proportion, paired_comparison

__all__ = ["PASS", "UNCLASSIFIED", "HOLM", "holm_bonferroni", "per_class_table", "transition_table",
           "compare_classes"]

PASS = "pass"  # the outcome class of a verdict that passed
UNCLASSIFIED = "unclassified"  # the name shown for a failure whose class is "" (a task that does not classify)
HOLM = "Holm-Bonferroni over the classes tested (family-wise error rate)"

Record = Mapping[str, Any]


def holm_bonferroni(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    With the m p-values sorted as p(1) <= ... <= p(m), the adjusted p(i) is
    max over j <= i of min(1, (m - j + 1) * p(j)); a hypothesis is rejected at level alpha
    when its adjusted p-value is <= alpha.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def _class_name(ok: Any, failure_class: Any) -> str:
    if ok:
        return PASS
    return str(failure_class) if failure_class else UNCLASSIFIED


def _failed(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if not r["attempt_ok"]]


def _rate(trials: list[tuple[Any, bool]]) -> dict[str, Any]:
    """passes, rate and 95% interval (Wilson, or a bootstrap over examples with several samples)."""
    rate, ci, method = clustered_proportion(trials)
    return {"n": len(trials), "passes": sum(ok for _, ok in trials), "rate": rate, "ci": list(ci), "interval": method}


def _ordered(counts: Mapping[str, int]) -> list[str]:
    """Most frequent first, then by name: a stable order for tables."""
    return sorted(counts, key=lambda c: (-counts[c], c))


def per_class_table(records: Iterable[Record]) -> dict[str, Any]:
    """Per failure class of the failed first attempts: count, retry success with and without reflection, gain.

    Returns {"failures": N, "correction": HOLM, "classes": {class: row}} with, per class (most
    frequent first):
        failures, share (of all failed first attempts), examples (distinct example ids);
        retry: {n, passes, rate, ci, interval} after a reflection (trials without a retry left out);
        control: the same for the retry without reflection, or None when no trial has one;
        gain: None without a control, else the paired comparison control -> retry on the trials
            that have both (stats.PairedComparison.to_json: difference = retry rate - control rate,
            its interval, p_value, test) and p_holm, p_value adjusted over the classes with a gain.
    """
    failed = _failed(records)
    by_class: dict[str, list[Record]] = {}
    for r in failed:
        by_class.setdefault(_class_name(False, r.get("attempt_class")), []).append(r)
    counts = {c: len(rs) for c, rs in by_class.items()}
    classes: dict[str, dict[str, Any]] = {}
    for c in _ordered(counts):
        rows = by_class[c]
        retried = [(r["example_id"], bool(r["retry_ok"])) for r in rows if r.get("retry_ok") is not None]
        controls = [(r["example_id"], bool(r["no_reflection_retry_ok"])) for r in rows
                    if r.get("no_reflection_retry_ok") is not None]
        pairs = [(r["example_id"], bool(r["no_reflection_retry_ok"]), bool(r["retry_ok"])) for r in rows
                 if r.get("retry_ok") is not None and r.get("no_reflection_retry_ok") is not None]
        classes[c] = {
            "failures": len(rows),
            "share": len(rows) / len(failed),
            "examples": len({r["example_id"] for r in rows}),
            "retry": _rate(retried) if retried else None,
            "control": _rate(controls) if controls else None,
            "gain": paired_comparison(pairs).to_json() if pairs else None,
        }
    _add_holm(classes, "gain")
    return {"failures": len(failed), "correction": HOLM, "classes": classes}


def _add_holm(rows: dict[str, dict[str, Any]], key: str) -> None:
    tested = [c for c, row in rows.items() if row[key] is not None]
    for c, p in zip(tested, holm_bonferroni([rows[c][key]["p_value"] for c in tested])):
        rows[c][key]["p_holm"] = p


def transition_table(records: Iterable[Record], retry: str = "retry") -> dict[str, Any]:
    """Failure class of the first attempt -> outcome class of the retry ("pass" or the retry's failure class).

    `retry` is "retry" (after a reflection) or "no_reflection_retry" (the control). Returns
    {"from": [classes of the first attempts, most frequent first], "to": [outcome classes, "pass"
    first], "counts": {from: {to: count}}, "totals": {from: count}}; failed first attempts without
    that retry are left out. Each row's counts sum to its total.
    """
    if retry not in ("retry", "no_reflection_retry"):
        raise ValueError(f"retry must be 'retry' or 'no_reflection_retry', got {retry!r}")
    counts: dict[str, Counter[str]] = {}
    for r in _failed(records):
        if r.get(f"{retry}_ok") is None:
            continue
        source = _class_name(False, r.get("attempt_class"))
        counts.setdefault(source, Counter())[_class_name(r[f"{retry}_ok"], r.get(f"{retry}_class"))] += 1
    totals = {c: sum(row.values()) for c, row in counts.items()}
    outcomes: Counter[str] = Counter()
    for row in counts.values():
        outcomes.update(row)
    to = ([PASS] if PASS in outcomes else []) + [c for c in _ordered(outcomes) if c != PASS]
    sources = _ordered(totals)
    return {"retry": retry, "from": sources, "to": to,
            "counts": {s: {t: counts[s][t] for t in to if counts[s][t]} for s in sources},
            "totals": {s: totals[s] for s in sources}}


def _trial_key(r: Record) -> tuple[str, int]:
    return str(r["example_id"]), int(r.get("sample", 0) or 0)


def _by_trial(records: Iterable[Record], which: str) -> dict[tuple[str, int], Record]:
    out: dict[tuple[str, int], Record] = {}
    for r in records:
        key = _trial_key(r)
        if key in out:
            raise ValueError(f"the {which} evaluation has trial (example {key[0]!r}, sample {key[1]}) twice")
        out[key] = r
    return out


def compare_classes(before: Iterable[Record], after: Iterable[Record]) -> dict[str, Any]:
    """Two evaluations of the same trials (before vs after training), class by class.

    first_attempt: per outcome class of the first attempt ("pass" included), the share of trials
        in it before and after, paired by trial (the McNemar test on "is in this class", clustered
        by example with several samples; difference = after - before) with p_holm over the classes.
    retry: per failure class, the retry success after reflection before and after. These are not
        paired (training changes which trials fail in a class), so only each side's rate and
        interval are given.
    Raises ValueError with one sentence when the two evaluations do not hold the same trials.
    """
    b, a = _by_trial(before, "before"), _by_trial(after, "after")
    if b.keys() != a.keys():
        only_b, only_a = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
        example = (only_b or only_a)[0]
        raise ValueError(
            f"the two evaluations hold different trials ({len(only_b)} only before, {len(only_a)} only after, "
            f"e.g. example {example[0]!r} sample {example[1]}); evaluate both on the same examples, "
            "samples and seed")
    keys = sorted(b)
    outcome_b = {k: _class_name(b[k]["attempt_ok"], b[k].get("attempt_class")) for k in keys}
    outcome_a = {k: _class_name(a[k]["attempt_ok"], a[k].get("attempt_class")) for k in keys}
    seen = Counter(outcome_b.values()) + Counter(outcome_a.values())
    first: dict[str, dict[str, Any]] = {}
    for c in ([PASS] if PASS in seen else []) + [c for c in _ordered(seen) if c != PASS]:
        pairs = [(k[0], outcome_b[k] == c, outcome_a[k] == c) for k in keys]
        comparison = paired_comparison(pairs).to_json()
        first[c] = {"before": sum(x for _, x, _ in pairs), "after": sum(y for _, _, y in pairs), "gain": comparison}
    _add_holm(first, "gain")
    table_b, table_a = per_class_table(b.values()), per_class_table(a.values())
    retry = {}
    for c in _ordered(Counter({c: row["failures"] for c, row in table_b["classes"].items()})
                      + Counter({c: row["failures"] for c, row in table_a["classes"].items()})):
        rb, ra = table_b["classes"].get(c), table_a["classes"].get(c)
        retry[c] = {"before": rb["retry"] if rb else None, "after": ra["retry"] if ra else None,
                    "failures_before": rb["failures"] if rb else 0, "failures_after": ra["failures"] if ra else 0}
    return {"trials": len(keys), "correction": HOLM, "first_attempt": first, "retry": retry}
