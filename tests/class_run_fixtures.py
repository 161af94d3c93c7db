"""A hand-built run folder whose evaluations carry failure classes (addition task, 12 examples x 1 sample).

After training (eval_after), trial k is example e{k}, sample 0:
- e0..e7 fail their first attempt as wrong_sum; the retry after reflection passes on e0..e6 and fails
  on e7 (wrong_sum again); the control (no reflection) fails on all eight, as wrong_sum.
- e8, e9 fail as no_answer; e8's retry and control both pass; e9's retry fails as wrong_sum and its
  control as no_answer.
- e10, e11 pass their first attempt.
  Reflections: e0..e5 "Let me add column by column." (six copies), e6..e9 four different texts.
Before training (eval_before): e0..e9 fail as wrong_sum, e10, e11 as no_answer; the retry and the
control both pass on e0, e1 only; every other retry fails in its first attempt's class. Reflections
are all different.

The numbers tests check, worked out by hand: after, wrong_sum: retry 7/8, control 0/8, 7 trials pass
only with reflection and none only without, so the exact McNemar p = 2 / 2^7 = 0.015625, and Holm over
the two classes doubles the smaller p: 0.03125; no_answer: retry 1/2, control 1/2, no discordant
trial, p = 1, Holm p = max(0.03125, 1 * 1) = 1. Transitions after: wrong_sum -> pass 7, wrong_sum 1;
no_answer -> pass 1, wrong_sum 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r3rl.evaluation.classes import per_class_table, transition_table
from r3rl.evaluation.diagnostics import record_diagnostics

TEMPLATE = "Let me add column by column."
AFTER_UNIQUE = ["I forgot the carry.", "Check the tens digit.", "Put the answer in tags.", "Answer inside the tags."]


def _trial(k: int, attempt_class: str, retry_ok: bool | None, retry_class: str, control_ok: bool | None,
           control_class: str, reflection: str) -> dict[str, Any]:
    passed = attempt_class == ""
    return {"example_id": f"e{k}", "sample": 0, "prompt": f"What is {k} + {k}?", "attempt_text": "<answer>0</answer>",
            "attempt_ok": passed, "attempt_class": attempt_class, "attempt_reason": "" if passed else "wrong",
            "reflection_text": reflection, "retry_text": "" if passed else "<answer>1</answer>",
            "retry_ok": retry_ok, "retry_class": retry_class, "retry_reason": "",
            "no_reflection_retry_text": "", "no_reflection_retry_ok": control_ok,
            "no_reflection_retry_class": control_class}


def after_records() -> list[dict[str, Any]]:
    rows = []
    for k in range(8):
        ok = k < 7
        rows.append(_trial(k, "wrong_sum", ok, "" if ok else "wrong_sum", False, "wrong_sum",
                           TEMPLATE if k < 6 else AFTER_UNIQUE[k - 6]))
    rows.append(_trial(8, "no_answer", True, "", True, "", AFTER_UNIQUE[2]))
    rows.append(_trial(9, "no_answer", False, "wrong_sum", False, "no_answer", AFTER_UNIQUE[3]))
    rows += [_trial(k, "", None, "", None, "", "") for k in (10, 11)]
    return rows


def before_records() -> list[dict[str, Any]]:
    rows = [_trial(k, "wrong_sum", k < 2, "" if k < 2 else "wrong_sum", k < 2, "" if k < 2 else "wrong_sum",
                   f"Attempt {k} added the digits wrong.") for k in range(10)]
    rows += [_trial(k, "no_answer", False, "no_answer", False, "no_answer", f"Answer {k} had no tags.")
             for k in (10, 11)]
    return rows


def write_eval(folder: Path, records: list[dict[str, Any]], *, tables: bool, control: bool = True,
               model: str = "m", task: str = "addition") -> None:
    """results.json (with the per-class tables when `tables`) and episodes.jsonl of `records`."""
    folder.mkdir(parents=True)
    n = len(records)
    acc1 = sum(r["attempt_ok"] for r in records) / n
    acc2 = sum(r["attempt_ok"] or bool(r["retry_ok"]) for r in records) / n
    results: dict[str, Any] = {"task": task, "model": model, "n": n, "samples": 1,
                               "acc@1": acc1, "acc@1_ci": [0.0, 1.0], "acc@2": acc2, "acc@2_ci": [0.0, 1.0]}
    if control:
        results["acc@2_no_reflection"] = sum(r["attempt_ok"] or bool(r["no_reflection_retry_ok"]) for r in records) / n
        results["acc@2_no_reflection_ci"] = [0.0, 1.0]
    if tables:
        results["by_class"] = per_class_table(records)
        results["transitions"] = {t: transition_table(records, t) for t in ("retry", "no_reflection_retry")}
        results["reflection_diagnostics"] = record_diagnostics(records)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


DIVERSITY_STEPS = [  # distinct-2 falling, the duplicate share rising: a collapse onto one template
    {"step": 1, "reward_mean": 0.2, "reflection_distinct_2": 0.9, "reflection_duplicate_share": 0.0,
     "reflection_len_p50": 30},
    {"step": 2, "reward_mean": 0.3, "reflection_distinct_2": 0.7, "reflection_duplicate_share": 0.25,
     "reflection_len_p50": 28},
    {"step": 3, "reward_mean": 0.4, "reflection_distinct_2": 0.4, "reflection_duplicate_share": 0.5,
     "reflection_len_p50": 20},
    {"step": 4, "reward_mean": 0.5, "reflection_distinct_2": 0.2, "reflection_duplicate_share": 0.75,
     "reflection_len_p50": 12, "reflection_most_repeated": [{"text": TEMPLATE, "count": 12}]},
]


def class_run(root: Path, *, tables: bool = True, metrics: bool = True) -> Path:
    """The run folder described above; `tables=False` leaves the per-class tables out of results.json."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("task:\n  name: addition\ntrain:\n  beta: 0.0\n")
    write_eval(root / "eval_before", before_records(), tables=tables, model="base")
    write_eval(root / "eval_after", after_records(), tables=tables, model="trained")
    if metrics:
        (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DIVERSITY_STEPS))
    return root
