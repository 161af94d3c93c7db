"""The result of one evaluation: the schema of results.json, which evaluate_model writes and the
trainer, the CLI's tables and the reports read.

results.json holds `EvalResult.to_json()`; readers take it back with `EvalResult.from_json`, which
accepts the results.json of older r3rl versions: a missing field is None (and is not written back),
an unknown key is kept in `extra`. to_json writes the keys in the order r3rl has always written them,
so `to_json(from_json(x)) == x` and a run's results.json is the same bytes as before the type existed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

_ACC = re.compile(r"acc@\d+(_no_reflection)?")  # acc@1, acc@2, acc@2_no_reflection, acc@3, ...


@dataclass
class Accuracy:
    """One accuracy of results.json: "<name>", "<name>_ci" and "<name>_hits"."""

    value: float
    """Share of the trials that passed."""
    ci: list[float] | None = None
    """95% interval [lo, hi] (Wilson, or a bootstrap over examples with several samples: EvalResult.intervals)."""
    hits: int | None = None
    """Trials that passed (None in results.json of r3rl versions that did not write it)."""


@dataclass
class EvalResult:
    """One evaluation (evaluation/accuracy.py evaluate_model). Metric names are those of
    records.passed_predicates: acc@1, acc@2, acc@2_no_reflection (the control, when run), acc@3.. (rounds)."""

    task: str | None = None
    model: str | None = None
    """The model name the evaluation was given (model.name_or_path)."""
    n: int | None = None
    """Examples evaluated."""
    samples: int | None = None
    """Samples (trials) per example."""
    trials: int | None = None
    weights: str | None = None
    """provenance's fingerprint of the evaluated weights (None when none was taken, or in older files)."""
    acc: dict[str, Accuracy] = field(default_factory=dict)
    """Metric name -> its accuracy, in the order results.json lists them."""
    verifier_errors: int | None = None
    retry_fix_rate: float | None = None
    """Share of the failed first attempts whose retry after a reflection passed."""
    by_group: dict[str, Any] | None = None
    """Task.summarize of the trials (per-group results; only for tasks whose examples have groups)."""
    intervals: str | None = None
    """How the acc@k intervals were made (stats.clustered_proportion's method)."""
    retry_fix_rate_ci: list[float] | None = None
    retry_fix_rate_interval: str | None = None
    comparisons: dict[str, Any] | None = None
    """{"acc@2_vs_no_reflection": stats.PairedComparison.to_json()} when the control ran."""
    reflection_diagnostics: dict[str, Any] | None = None
    by_class: dict[str, Any] | None = None
    """classes.per_class_table of the failed first attempts (when the task classifies its failures)."""
    transitions: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of an older (or newer) results.json that are not fields here, kept as read."""

    def value(self, name: str) -> float | None:
        """The accuracy `name` (e.g. "acc@2"), None when it was not measured."""
        a = self.acc.get(name)
        return None if a is None else a.value

    def to_json(self) -> dict[str, Any]:
        """The results.json object: fields in order (None left out), each accuracy as its three keys, then extra."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "acc":
                for name, a in self.acc.items():
                    out[name] = a.value
                    if a.ci is not None:
                        out[f"{name}_ci"] = a.ci
                    if a.hits is not None:
                        out[f"{name}_hits"] = a.hits
            elif f.name != "extra" and (v := getattr(self, f.name)) is not None:
                out[f.name] = v
        return out | {k: v for k, v in self.extra.items() if k not in out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvalResult":
        """A results.json object of any r3rl version: missing fields are None, unknown keys go to `extra`.
        Values are kept as read (readers that need numbers check them: reporting/run.py)."""
        names = {f.name for f in fields(cls)} - {"acc", "extra"}
        acc = {k: Accuracy(v, data.get(f"{k}_ci"), data.get(f"{k}_hits")) for k, v in data.items() if _ACC.fullmatch(k)}
        acc_keys = {f"{k}{s}" for k in acc for s in ("", "_ci", "_hits") if f"{k}{s}" in data}
        return cls(**{k: v for k, v in data.items() if k in names}, acc=acc,
                   extra={k: v for k, v in data.items() if k not in names and k not in acc_keys})
