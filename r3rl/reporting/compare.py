"""Paired comparisons of a run's evaluations, from their episodes.jsonl trials.

Before and after training are evaluated on the same examples with the same seeds, so
their trials pair up by (example_id, sample); acc@2 and the no-reflection control are
scored on the very same trials. Each comparison is a paired test (r3rl.evaluation.stats:
exact McNemar, clustered by example when there are several samples per example) with
the paired difference and its 95% interval, never an overlap of two intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

from r3rl.evaluation.records import TrialRecord, passed_predicates
from r3rl.evaluation.stats import PairedComparison, paired_comparison
from r3rl.reporting.run import EvalResults

# How one trial counts for each accuracy: the evaluation's own predicates.
PASSED = passed_predicates(rounds=1, control=True)


@dataclass(frozen=True)
class Comparison:
    """One paired comparison, or the reason it could not be made (result None)."""

    label: str
    first: str  # what the first condition is, in words ("before training")
    second: str
    result: PairedComparison | None
    reason: str = ""
    unmatched: int = 0  # trials present in only one of the two evals


def trial_key(e: TrialRecord) -> tuple[str, int]:
    return (e.example_id, e.sample)


def before_after(metric: str, before: EvalResults | None, after: EvalResults | None) -> Comparison:
    """`metric` before vs after training, trials paired by (example_id, sample)."""
    label, first, second = metric, "before training", "after training"
    if before is None or after is None:
        missing = " and ".join(n for n, ev in (("before", before), ("after", after)) if ev is None)
        return Comparison(label, first, second, None, f"there is no {missing}-training result")
    if before.acc.get(metric) is None or after.acc.get(metric) is None:
        return Comparison(label, first, second, None, f"{metric} is not in both results.json files")
    missing_eps = [ev.name for ev in (before, after) if not ev.episodes]
    if missing_eps:
        files = " and ".join(f"{n}/episodes.jsonl" for n in missing_eps)
        return Comparison(label, first, second, None, f"the paired test needs {files}, which is missing or empty")
    ok = PASSED[metric]
    after_by_key = {trial_key(e): e for e in after.episodes}
    before_keys = {trial_key(e) for e in before.episodes}
    pairs = [(k[0], ok(e), ok(after_by_key[k])) for e in before.episodes if (k := trial_key(e)) in after_by_key]
    unmatched = len(before_keys ^ set(after_by_key))
    if not pairs:
        return Comparison(label, first, second, None,
                          "no trial of eval_after matches one of eval_before by (example_id, sample)", unmatched)
    return Comparison(label, first, second, paired_comparison(pairs), unmatched=unmatched)


def reflection_vs_control(ev: EvalResults | None) -> Comparison | None:
    """acc@2 against the no-reflection control on the same trials of one eval; None when not run."""
    if ev is None or ev.acc.get("acc@2_no_reflection") is None or not ev.episodes:
        return None
    ctrl, refl = PASSED["acc@2_no_reflection"], PASSED["acc@2"]
    pairs = [(e.example_id, ctrl(e), refl(e)) for e in ev.episodes]
    return Comparison(f"acc@2 in {ev.name}", "without reflection (control)", "with reflection",
                      paired_comparison(pairs))
