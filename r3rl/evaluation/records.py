"""The evaluation record: one trial (an example and a sample index) as evaluation writes it to
episodes.jsonl, reporting reads it back, and `Task.summarize` sees it.

One schema in one place: `TrialRecord.to_json` writes a line, `TrialRecord.from_json` reads
one (also the records of earlier r3rl versions, where a trial whose first attempt passed had
`retry_ok: null`, and the short records tests and other tools write: only example_id and
attempt_ok are required). The failure classes come from `Verdict.failure_class` of the
verifier ("" = unclassified, or nothing to classify because that attempt passed or was not made).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from r3rl.runtime.io import iter_jsonl


@dataclass(frozen=True)
class RoundRecord:
    """One reflect/retry round of a trial (written only with rollout.rounds > 1)."""

    reflection_text: str
    retry_text: str
    retry_ok: bool


@dataclass(frozen=True)
class TrialRecord:
    """One trial of an evaluation: a first attempt and, when it failed, the retry after a
    reflection and (with eval.no_reflection_control) the retry after only "try again"."""

    example_id: str
    sample: int = 0  # which of eval.samples_per_example this trial is
    prompt: str = ""  # the task's first-turn text
    attempt_text: str = ""
    attempt_ok: bool = False
    attempt_reason: str = ""  # the verifier's reason sentence
    reflection_text: str = ""  # "" when the first attempt passed (no reflection was asked for)
    retry_text: str = ""
    retry_ok: bool = False  # the retry after the reflection passed (False when none was made)
    retry_reason: str = ""
    no_reflection_retry_text: str = ""  # the control's retry ("" when the control was not run)
    no_reflection_retry_ok: bool = False
    attempt_class: str = ""  # Verdict.failure_class of the failed first attempt
    retry_class: str = ""  # ... of the failed retry after the reflection
    no_reflection_retry_class: str = ""  # ... of the failed control retry
    group: str | None = None  # Task.breakdown(example): the group it is reported under (BFCL category)
    rounds: tuple[RoundRecord, ...] | None = None  # every round, with rollout.rounds > 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown keys read back, kept as they are

    def passed_within(self, k: int) -> bool:
        """acc@k's predicate: the first attempt passed, or a retry within k - 1 reflect/retry rounds did
        (acc@2 counts the first round's retry; with several rounds the rounds' list decides)."""
        if self.attempt_ok:
            return True
        if k <= 1:
            return False
        if k == 2 or self.rounds is None:
            return self.retry_ok
        return any(r.retry_ok for r in self.rounds[: k - 1])

    def passed_control(self) -> bool:
        """acc@2_no_reflection's predicate: the first attempt or the control's retry passed."""
        return self.attempt_ok or self.no_reflection_retry_ok

    def get(self, key: str, default: Any = None) -> Any:
        """A field by name (dict-style), so summaries written for the dict records of earlier versions work."""
        if key in _FIELDS and key != "extra":
            value = getattr(self, key)
            if key == "rounds" and value is not None:
                return [r.__dict__ for r in value]
            return default if value is None else value
        return self.extra.get(key, default)

    def __getitem__(self, key: str) -> Any:
        """record[key] as for the dict records the per-class tables and diagnostics read (KeyError if unknown)."""
        if key not in _FIELDS and key not in self.extra:
            raise KeyError(key)
        return self.get(key)

    def to_json(self) -> dict[str, Any]:
        """The episodes.jsonl line: every field in order; group and rounds only when set."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update(value)
            elif f.name == "rounds":
                if value is not None:
                    out["rounds"] = [{"reflection_text": r.reflection_text, "retry_text": r.retry_text,
                                      "retry_ok": r.retry_ok} for r in value]
            elif not (f.name == "group" and value is None):
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "TrialRecord":
        """Read one episodes.jsonl line; a field of the wrong type raises ValueError naming it."""
        if "example_id" not in row or "attempt_ok" not in row:
            missing = [k for k in ("example_id", "attempt_ok") if k not in row]
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        kw: dict[str, Any] = {"example_id": str(row["example_id"])}
        for name in _BOOLS:
            if name in row:
                if row[name] is not None and not isinstance(row[name], bool):
                    raise ValueError(f"{name!r} must be true, false or null, got {row[name]!r}")
                kw[name] = bool(row[name])  # null (earlier versions: no retry made) is not a pass
        for name in _TEXTS:
            if name in row and row[name] is not None:
                if not isinstance(row[name], str):
                    raise ValueError(f"{name!r} must be a string, got {row[name]!r}")
                kw[name] = row[name]
        if "sample" in row:
            if not isinstance(row["sample"], int) or isinstance(row["sample"], bool):
                raise ValueError(f"'sample' must be an integer, got {row['sample']!r}")
            kw["sample"] = row["sample"]
        if row.get("group") is not None:
            kw["group"] = str(row["group"])
        if row.get("rounds") is not None:
            rounds = row["rounds"]
            if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
                raise ValueError(f"'rounds' must be a list of objects, got {rounds!r}")
            kw["rounds"] = tuple(RoundRecord(str(r.get("reflection_text", "")), str(r.get("retry_text", "")),
                                             r.get("retry_ok") is True) for r in rounds)
        kw["extra"] = {k: v for k, v in row.items() if k not in _FIELDS}
        return cls(**kw)


_FIELDS = {f.name for f in fields(TrialRecord)}
_BOOLS = ("attempt_ok", "retry_ok", "no_reflection_retry_ok")
_TEXTS = ("prompt", "attempt_text", "attempt_reason", "reflection_text", "retry_text", "retry_reason",
          "no_reflection_retry_text", "attempt_class", "retry_class", "no_reflection_retry_class")


def passed_predicates(rounds: int = 1, control: bool = True) -> dict[str, Callable[[TrialRecord], bool]]:
    """metric name -> whether a trial counts as passed for it: acc@1, acc@2, the control, acc@3.. with rounds."""
    passed: dict[str, Callable[[TrialRecord], bool]] = {
        "acc@1": lambda r: r.passed_within(1),
        "acc@2": lambda r: r.passed_within(2),
    }
    if control:
        passed["acc@2_no_reflection"] = TrialRecord.passed_control
    for k in range(3, rounds + 2):
        passed[f"acc@{k}"] = lambda r, k=k: r.passed_within(k)
    return passed


def read_trials(path: str | Path) -> list[TrialRecord]:
    """episodes.jsonl as TrialRecords; a bad line raises ValueError naming the file and line."""
    out = []
    for n, row in enumerate(iter_jsonl(path), 1):
        try:
            out.append(TrialRecord.from_json(row))
        except ValueError as e:
            raise ValueError(f"{path}, line {n}: {e}") from None
    return out
