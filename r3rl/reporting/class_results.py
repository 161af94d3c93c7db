"""An evaluation's failure classes, transitions and reflection diagnostics, as the report reads them.

results.json holds them under `by_class` (evaluation.classes.per_class_table), `transitions`
({"retry": ..., "no_reflection_retry": ...} of transition_table) and `reflection_diagnostics`
(evaluation.diagnostics.record_diagnostics). An older results.json lacks them: they are then
computed from episodes.jsonl, the classes only when its trials carry `attempt_class` (an
evaluation made before verifiers classified their failures has none, and a table of
"unclassified" rows would only repeat the overall retry rate), the diagnostics whenever the
failed trials carry their reflection text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3rl.evaluation.classes import UNCLASSIFIED, per_class_table, transition_table
from r3rl.evaluation.diagnostics import record_diagnostics
from r3rl.reporting.run import EvalResults, ReportError

RETRIES = ("retry", "no_reflection_retry")


@dataclass(frozen=True)
class EvalClasses:
    """What one evaluation says about failure classes and reflections; None where it says nothing."""

    name: str  # eval_before, eval_after, or the folder's name
    by_class: dict[str, Any] | None  # per_class_table, None when no failure is classified
    transitions: dict[str, Any] | None  # {"retry": table, "no_reflection_retry": table or None}
    diagnostics: dict[str, Any] | None  # record_diagnostics, None when no reflection was recorded
    records: list[dict[str, Any]] | None  # the trials with their classes (for compare_classes), or None
    source: str  # where the classes came from: "results.json", "episodes.jsonl" or "" (nowhere)


def _classified(table: dict[str, Any] | None) -> bool:
    """A table with at least one class other than "unclassified" (one that a task assigned)."""
    return bool(table) and any(c != UNCLASSIFIED for c in table.get("classes", {}))


def class_records(ev: EvalResults) -> list[dict[str, Any]] | None:
    """The episodes as evaluation records when their failed trials carry a failure class, else None.

    A trial's control outcome is dropped (None) when results.json has no control accuracy: an
    evaluation that ran no control may still write `no_reflection_retry_ok: false`, which would
    read as a control that never passes.
    """
    failed = [e for e in ev.episodes if e.get("attempt_ok") is False]
    if not failed or not any(e.get("attempt_class") for e in failed):
        return None
    control = ev.acc.get("acc@2_no_reflection") is not None
    records = []
    for e in ev.episodes:
        r = e.to_json() if hasattr(e, "to_json") else dict(e)
        if not control:
            r["no_reflection_retry_ok"] = None
        records.append(r)
    return records


def _section(path: Path, value: Any, key: str, required: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or required not in value:
        raise ReportError(f"{path}: {key!r} must be an object with {required!r} (as r3rl eval writes it), "
                          f"got {type(value).__name__}")
    return value


def load_eval_classes(eval_dir: Path, ev: EvalResults) -> EvalClasses:
    """The classes, transitions and diagnostics of the evaluation in eval_dir (already read as `ev`)."""
    path, result = eval_dir / "results.json", ev.result
    by_class = _section(path, result.by_class, "by_class", "classes")
    transitions = _section(path, result.transitions, "transitions", "retry")
    diagnostics = _section(path, result.reflection_diagnostics, "reflection_diagnostics", "n")
    records = class_records(ev)
    source = "results.json" if by_class is not None else ""
    if by_class is None and records is not None:
        by_class, source = per_class_table(records), "episodes.jsonl"
    if transitions is None and records is not None:
        transitions = {"retry": transition_table(records, "retry"),
                       "no_reflection_retry": (transition_table(records, "no_reflection_retry")
                                               if any(r.get("no_reflection_retry_ok") is not None for r in records)
                                               else None)}
    if diagnostics is None and any(e.get("attempt_ok") is False and e.get("reflection_text") for e in ev.episodes):
        diagnostics = record_diagnostics(ev.episodes)
    if diagnostics is not None and not diagnostics.get("n"):
        diagnostics = None
    if not _classified(by_class):
        by_class, transitions, source = None, None, ""
    return EvalClasses(ev.name, by_class, transitions, diagnostics, records, source)


def eval_dir_of(path: Path) -> Path:
    """The folder of the evaluation `side_by_side.final_eval` picks for `path` (same order)."""
    for candidate in (path / "eval_after", path):
        if (candidate / "results.json").is_file():
            return candidate
    raise ReportError(f"{path}: no evaluation (neither eval_after/results.json nor results.json)")
