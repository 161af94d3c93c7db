"""Reading a run folder: config.yaml, metrics.jsonl, eval_before/ and eval_after/.

The run folder contract: config.yaml (the resolved config), metrics.jsonl (one row per
optimizer step, written by the trainer), and eval_before/ / eval_after/ (results.json and
episodes.jsonl, written by `r3rl eval`), and final/ with weights.json (which weights final/
holds, of which step). Whether each results.json still describes the weights it names is
checked (`check_weights`, `check_final`): numbers of other weights are reported as stale.
Missing parts become notes, because a report of a run still training is useful; a folder
with none of them is an error, and so is a malformed file (naming file and line), because a
report quietly built from half a file would misstate the run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r3rl.errors import InputError
from r3rl.evaluation.records import TrialRecord, read_trials
from r3rl.evaluation.result import EvalResult
from r3rl.runtime.io import iter_jsonl

ACC_KEYS: tuple[tuple[str, str], ...] = (
    ("acc@1", "acc@1 (first try)"),
    ("acc@2", "acc@2 (retry after reflection)"),
    ("acc@2_no_reflection", "acc@2 without reflection (control)"),
)
EVAL_DIRS = ("eval_before", "eval_after")


class ReportError(InputError):
    """A run folder that cannot be reported on; the message names the folder or file (and line)."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects (blank lines skipped) with r3rl.runtime.io's parser.

    Its errors name the file and the line; they are re-raised as ReportError so a
    caller can tell a broken run folder from a bug in the report code.
    """
    try:
        return list(iter_jsonl(path))
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except ValueError as e:
        raise ReportError(str(e)) from e


def _read_trials(path: Path) -> list[TrialRecord]:
    """episodes.jsonl read through evaluation's own schema; a bad line is a ReportError naming file and line."""
    try:
        return read_trials(path)
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except ValueError as e:
        raise ReportError(str(e)) from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: malformed YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def lookup(config: dict[str, Any], *dotted: str) -> Any:
    """The first of the dotted config paths that is set (configs have moved keys between sections)."""
    for path in dotted:
        node: Any = config
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Accuracy:
    """An accuracy (fraction) with its 95% interval, None when the eval did not record one."""

    value: float
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class EvalResults:
    """One eval folder: results.json read into Accuracy values, plus its trials (episodes.jsonl)."""

    name: str
    task: str | None
    model: str | None
    n: int | None
    samples: int | None
    acc: dict[str, Accuracy | None]
    episodes: list[TrialRecord]  # the schema evaluation writes (r3rl/evaluation/records.py)
    intervals: str | None = None  # how results.json's intervals were made, when it says
    weights: str | None = None  # provenance fingerprint of the evaluated weights (None: an earlier r3rl's file)
    result: EvalResult = field(default_factory=EvalResult)  # results.json as read, unchecked (by_class, transitions, ...)


def load_eval(eval_dir: Path) -> EvalResults | None:
    """Read eval_before/ or eval_after/; None when the folder or its results.json is absent."""
    results_path = eval_dir / "results.json"
    if not results_path.is_file():
        return None
    result = EvalResult.from_json(_read_json(results_path))
    acc: dict[str, Accuracy | None] = {}
    for key, _ in ACC_KEYS:
        got = result.acc.get(key)
        if got is None:
            acc[key] = None
            continue
        value, ci = got.value, got.ci
        if not is_number(value):
            raise ReportError(f"{results_path}: {key!r} must be a number, got {value!r}")
        if ci is not None and not (
            isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_number(c) for c in ci)
        ):
            raise ReportError(f"{results_path}: {key}_ci must be [lo, hi], got {ci!r}")
        acc[key] = Accuracy(float(value), (float(ci[0]), float(ci[1])) if ci is not None else None)
    episodes_path = eval_dir / "episodes.jsonl"
    episodes = _read_trials(episodes_path) if episodes_path.is_file() else []
    n, samples, intervals, weights = result.n, result.samples, result.intervals, result.weights
    return EvalResults(
        name=eval_dir.name,
        task=result.task,
        model=result.model,
        n=n if isinstance(n, int) else None,
        samples=samples if isinstance(samples, int) else None,
        acc=acc,
        episodes=episodes,
        intervals=intervals if isinstance(intervals, str) else None,
        weights=weights if isinstance(weights, str) and weights else None,
        result=result,
    )


def load_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-step metrics sorted by step, and notes about what had to be skipped.

    Lines sharing a step are merged, later keys winning: a resumed run logs the
    steps after its last checkpoint again, and the newer values are the ones that
    belong to the saved weights.
    """
    by_step: dict[int, dict[str, Any]] = {}
    no_step = 0
    for row in read_jsonl(path):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            no_step += 1
            continue
        by_step.setdefault(step, {}).update(row)
    notes = [f"{path.name}: {no_step} line(s) without an integer 'step' were ignored."] if no_step else []
    return [by_step[s] for s in sorted(by_step)], notes


def metric_series(metrics: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) for one metric: steps that lack it or hold a non-finite value are left out."""
    steps: list[int] = []
    values: list[float] = []
    for row in metrics:
        v = row.get(key)
        if is_number(v) and math.isfinite(v):
            steps.append(row["step"])
            values.append(float(v))
    return steps, values


def non_finite_steps(metrics: Sequence[dict[str, Any]], key: str) -> list[int]:
    return [r["step"] for r in metrics if is_number(r.get(key)) and not math.isfinite(r[key])]


@dataclass
class RunData:
    """Everything the report shows, read once from the run folder."""

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    before: EvalResults | None
    after: EvalResults | None
    notes: list[str] = field(default_factory=list)
    # eval folder name -> the one-sentence warning that its numbers describe other weights than it names
    stale: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)  # "final/", "eval_after/" ... -> weights fingerprint
    final_step: int | None = None  # the step final/ holds the weights of (weights.json, when they still match)


def check_weights(root: Path, config: dict[str, Any],
                  evals: dict[str, str | None]) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Do the evals' numbers still describe the weights they name? eval_after/ names the run's final/ (or
    final-merged/), eval_before/ the config's model. `evals`: eval folder name -> its results.json
    "weights" (None when it records none). Returns (stale: name -> warning, notes, weights shown:
    label -> fingerprint). Fingerprints are provenance's: a few hundred KiB read per folder."""
    from r3rl.config import ModelConfig
    from r3rl.engine.provenance import folder_weights, model_identity

    shown: dict[str, str] = {}
    finals = {f"{f.name}/": w for f in (root / "final", root / "final-merged") if (w := folder_weights(f))}
    shown.update(finals)
    targets: dict[str, tuple[str, set[str]]] = {"eval_after": (str(root / "final"), set(finals.values()))}
    base = lookup(config, "model.name_or_path")
    if base and not lookup(config, "model.base"):
        model = ModelConfig(name_or_path=str(base), revision=str(lookup(config, "model.revision") or ""))
        if w := model_identity(model)["weights"]:
            targets["eval_before"] = (str(base), {w})
    stale, notes = {}, []
    for name, weights in evals.items():
        if weights:
            shown[f"{name}/"] = weights
        if name not in targets or not targets[name][1]:
            continue  # nothing to check against (no final/ yet, or a model not on this machine)
        target, have = targets[name]
        if weights is None:
            notes.append(f"{name}/results.json records no weights fingerprint (written by an earlier r3rl), so whether "
                         f"its numbers describe {target} cannot be checked.")
        elif weights not in have:
            stale[name] = (f"{name}/results.json describes other weights than {target} holds now (trained further or "
                           f"replaced after that evaluation), so its numbers are stale: evaluate again with "
                           f"`r3rl eval --config {root / 'config.yaml'} --model {target} -o {root / name} --overwrite`.")
    return stale, notes, shown


def check_final(root: Path, last_step: int | None) -> tuple[dict[str, str], int | None]:
    """The trainer's weights.json against final/ and metrics.jsonl: (stale: key -> warning, the step final/
    holds when its weights are still the recorded ones). A run without weights.json (still training, or
    an earlier r3rl) has nothing to check."""
    from r3rl.engine.provenance import folder_weights

    path = root / "weights.json"
    record = _read_json(path).get("final") if path.is_file() else None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return {}, None
    final, step = root / "final", record["step"]
    if record.get("weights") != folder_weights(final):
        return {"final": (f"{final} holds other weights than the run saved there at step {step} ({path}), so the run's "
                          f"metrics and evaluations do not describe them.")}, None
    if last_step is not None and last_step != step:
        return {"metrics.jsonl": (f"metrics.jsonl runs to step {last_step} but {final} holds the weights of step {step} "
                                  f"(a resumed run stopped before saving its final model), so the steps after {step} "
                                  "describe no saved model.")}, step
    return {}, step


def stale_warnings(run_dir: str | os.PathLike[str]) -> list[str]:
    """The run's stale-numbers warnings (check_weights, check_final), without reading any episodes.jsonl."""
    root = Path(run_dir)
    config = _read_config(root / "config.yaml") if (root / "config.yaml").is_file() else {}
    evals = {}
    for name in EVAL_DIRS:
        if (root / name / "results.json").is_file():
            w = EvalResult.from_json(_read_json(root / name / "results.json")).weights
            evals[name] = w if isinstance(w, str) and w else None
    metrics = load_metrics(root / "metrics.jsonl")[0] if (root / "metrics.jsonl").is_file() else []
    stale = {**check_weights(root, config, evals)[0], **check_final(root, metrics[-1]["step"] if metrics else None)[0]}
    return list(stale.values())


def load_evals(root: Path) -> tuple[EvalResults | None, EvalResults | None]:
    return load_eval(root / "eval_before"), load_eval(root / "eval_after")


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read a run folder; missing parts become notes, malformed ones and an empty folder raise ReportError."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: not a run folder (no such directory)")
    # Notes here are for what no section says itself: sections note their own empty state.
    notes: list[str] = []
    config_path = root / "config.yaml"
    config = _read_config(config_path) if config_path.is_file() else {}
    metrics_path = root / "metrics.jsonl"
    metrics: list[dict[str, Any]] = []
    if metrics_path.is_file():
        metrics, metric_notes = load_metrics(metrics_path)
        notes.extend(metric_notes)
    before, after = load_evals(root)
    if not metrics and before is None and after is None:
        raise ReportError(_nothing_to_report(root))
    if (before is None) != (after is None):
        name = "eval_before" if before is None else "eval_after"
        notes.append(f"{name}/results.json is missing, so before and after cannot be compared.")
    if before and after:
        for attr in ("task", "n", "samples"):
            if getattr(before, attr) != getattr(after, attr):
                notes.append(
                    f"The two evals differ in {attr} ({getattr(before, attr)!r} before, "
                    f"{getattr(after, attr)!r} after), so the comparison is not like for like."
                )
    stale, weight_notes, shown = check_weights(root, config, {ev.name: ev.weights for ev in (before, after) if ev})
    final_stale, final_step = check_final(root, metrics[-1]["step"] if metrics else None)
    return RunData(root, config, metrics, before, after, notes + weight_notes, {**stale, **final_stale}, shown,
                   final_step)


def _nothing_to_report(root: Path) -> str:
    if (root / "results.json").is_file():
        return (f"{root} holds a single evaluation (results.json), not a run: `r3rl report` needs a run folder "
                "with metrics.jsonl or eval_before/results.json and eval_after/results.json.")
    metrics = "metrics.jsonl is empty" if (root / "metrics.jsonl").is_file() else "there is no metrics.jsonl"
    return (f"{root} holds no run to report on: {metrics} and neither eval_before/results.json "
            "nor eval_after/results.json exists.")
