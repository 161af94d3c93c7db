"""`r3rl compare RUN_DIR RUN_DIR ...`: runs evaluated on the same examples, side by side.

Each run contributes its final evaluation (eval_after/, or the folder itself when it holds a
results.json). Runs are comparable only when their trials are the same (example_id, sample)
pairs of the same task: then every accuracy difference between two runs is a paired one, and
it is tested as such (r3rl.evaluation.stats.paired_comparison: exact McNemar, clustered by
example with several samples), each run against the first. The p-values of all comparisons
made are adjusted together by Holm's step-down method, which controls the family-wise error
rate without assuming the tests independent. When the runs share one eval_before (the same
base model evaluated alike), it is shown as the first row, "base".

When the evaluations carry failure classes, compare.json's `classes` (and compare.md) adds each
run's per-class gain of reflection over the control, and each run's first attempts by class
against the first row's (r3rl.evaluation.classes.compare_classes); Holm's correction is then
applied within each table, over its classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3rl.evaluation.classes import HOLM, compare_classes, holm_bonferroni
from r3rl.evaluation.stats import paired_comparison
from r3rl.reporting.class_results import eval_dir_of, load_eval_classes
from r3rl.reporting.classes_section import fmt_p_cell, rate_cell
from r3rl.reporting.compare import PASSED, trial_key
from r3rl.reporting.run import ACC_KEYS, EvalResults, ReportError, load_eval
from r3rl.reporting.wording import fmt_discordant, fmt_pts, fmt_pts_ci

COMPARED = ("acc@1", "acc@2")  # metrics tested between runs; the control is shown, not tested


@dataclass(frozen=True)
class RunEval:
    """One row of the comparison: a label and the evaluation it stands for."""

    label: str
    path: Path
    eval: EvalResults


def final_eval(path: Path) -> EvalResults:
    """The evaluation a run folder stands for: eval_after/, or the folder's own results.json."""
    for candidate in (path / "eval_after", path):
        ev = load_eval(candidate)
        if ev is not None:
            return ev
    raise ReportError(f"{path}: no evaluation to compare (neither {path}/eval_after/results.json nor "
                      f"{path}/results.json exists); run `r3rl eval` into it first")


def _labels(paths: list[Path]) -> list[str]:
    """Short distinct labels: the folder names, or the whole paths when two names collide."""
    names = [p.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def check_same_trials(rows: list[RunEval]) -> None:
    """Refuse, in one sentence, runs whose evaluation sets differ (task, or the trials themselves)."""
    first = rows[0]
    tasks = {r.eval.task for r in rows}
    if len(tasks) > 1:
        raise ReportError("the runs evaluate different tasks (" + ", ".join(f"{r.label}: {r.eval.task}" for r in rows)
                          + "), so no example pairs up; compare runs of one task")
    for r in rows:
        if not r.eval.episodes:
            raise ReportError(f"{r.path}: its evaluation has no episodes.jsonl, which the paired tests need; "
                              "evaluate it again with `r3rl eval`")
    keys = {trial_key(e) for e in first.eval.episodes}
    for r in rows[1:]:
        other = {trial_key(e) for e in r.eval.episodes}
        if other != keys:
            raise ReportError(
                f"{first.label} and {r.label} were evaluated on different trials ({len(keys - other)} only in "
                f"{first.label}, {len(other - keys)} only in {r.label}); evaluate both with the same eval.split, "
                "eval.num_examples, eval.samples_per_example and seed"
            )


def collect(run_dirs: list[str | os.PathLike[str]]) -> list[RunEval]:
    """The rows to compare: a shared base evaluation first (when every run has the same one), then each run."""
    if len(run_dirs) < 2:
        raise ReportError("r3rl compare needs at least two run folders")
    paths = [Path(p) for p in run_dirs]
    for p in paths:
        if not p.is_dir():
            raise ReportError(f"{p}: not a run folder (no such directory)")
    rows = [RunEval(label, p, final_eval(p)) for label, p in zip(_labels(paths), paths)]
    check_same_trials(rows)
    befores = [load_eval(p / "eval_before") for p in paths]
    if all(b is not None for b in befores) and _same_outcomes(befores):  # type: ignore[arg-type]
        rows.insert(0, RunEval("base", paths[0] / "eval_before", befores[0]))  # type: ignore[arg-type]
    return rows


def _same_outcomes(evals: list[EvalResults]) -> bool:
    """Every eval_before scored the same trials identically: one base model, evaluated alike."""
    def outcomes(ev: EvalResults) -> dict[Any, tuple[bool, bool]]:
        return {trial_key(e): (PASSED["acc@1"](e), PASSED["acc@2"](e)) for e in ev.episodes}

    first = outcomes(evals[0])
    return bool(first) and all(outcomes(ev) == first for ev in evals[1:])


def comparisons(rows: list[RunEval]) -> list[dict[str, Any]]:
    """Each row against the first, per metric of COMPARED: the paired test, Holm-adjusted over all of them."""
    ref = rows[0]
    ref_by_key = {trial_key(e): e for e in ref.eval.episodes}
    out: list[dict[str, Any]] = []
    for r in rows[1:]:
        for metric in COMPARED:
            ok = PASSED[metric]
            pairs = [(e.get("example_id"), ok(ref_by_key[trial_key(e)]), ok(e)) for e in r.eval.episodes]
            cmp = paired_comparison(pairs)
            out.append({"metric": metric, "first": ref.label, "second": r.label, **cmp.to_json()})
    for row, adj in zip(out, holm_bonferroni([c["p_value"] for c in out])):
        row["p_holm"] = adj
    return out


def accuracy_rows(rows: list[RunEval]) -> list[dict[str, Any]]:
    """results.json's accuracies of each row (value and interval; None where not measured)."""
    table = []
    for r in rows:
        entry: dict[str, Any] = {"run": r.label, "path": str(r.path), "model": r.eval.model, "trials": len(r.eval.episodes)}
        for key, _ in ACC_KEYS:
            acc = r.eval.acc.get(key)
            entry[key] = None if acc is None else {"value": acc.value, "ci": list(acc.ci) if acc.ci else None}
        table.append(entry)
    return table


def class_gains(rows: list[RunEval]) -> dict[str, Any]:
    """Per failure class, each row's gain of reflection over the control, and each row's first attempts vs the first's.

    by_class: {run: per_class_table or None (its evaluation classifies no failure)};
    first_attempt: [{"first", "second", **compare_classes}] for each row after the first whose
    evaluation and the first's both carry classes (the trials are the same: check_same_trials).
    Holm's correction is applied within each table (over its classes), as evaluation.classes does.
    """
    classes = [(r, load_eval_classes(eval_dir_of(r.path), r.eval)) for r in rows]
    ref, ref_classes = classes[0]
    first_attempt = []
    for r, c in classes[1:]:
        if ref_classes.records is not None and c.records is not None:
            try:
                cmp = compare_classes(ref_classes.records, c.records)
            except ValueError as e:  # a trial listed twice in one episodes.jsonl
                raise ReportError(f"{r.path} vs {ref.path}: {e}") from e
            first_attempt.append({"first": ref.label, "second": r.label, **cmp})
    return {"by_class": {r.label: c.by_class for r, c in classes}, "first_attempt": first_attempt,
            "correction": HOLM + ", within each table"}


def compare_runs(run_dirs: list[str | os.PathLike[str]]) -> dict[str, Any]:
    """The whole comparison as JSON-ready data (what compare.json holds)."""
    rows = collect(run_dirs)
    return {
        "task": rows[0].eval.task,
        "trials": len(rows[0].eval.episodes),
        "runs": accuracy_rows(rows),
        "comparisons": comparisons(rows),
        "correction": "Holm-Bonferroni over all comparisons listed",
        "classes": class_gains(rows),
    }


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not measured"
    ci = entry["ci"]
    return f"{100 * entry['value']:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def markdown(data: dict[str, Any]) -> str:
    """compare.md: the accuracy table, then the paired tests."""
    keys = [k for k, _ in ACC_KEYS]
    lines = [f"# Runs compared on {data['trials']} trials of {data['task']}", "",
             "| run | model | " + " | ".join(label for _, label in ACC_KEYS) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in keys) + " |"]
    for r in data["runs"]:
        lines.append(f"| {r['run']} | {r['model'] or ''} | " + " | ".join(_cell(r[k]) for k in keys) + " |")
    lines += ["", "Paired tests, each run against the first row, on the same trials "
              f"(p adjusted: {data['correction']}):", "",
              "| metric | first | second | difference (pts) | 95% interval | trials right in one run only | p | p (Holm) | test |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in data["comparisons"]:
        lo, hi = c["difference_ci"]
        lines.append(f"| {c['metric']} | {c['first']} | {c['second']} | {100 * c['difference']:+.1f} | "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                     f"{fmt_discordant(c['first'], c['first_only'], c['second'], c['second_only'])} | "
                     f"{c['p_value']:.3g} | {c['p_holm']:.3g} | {c['test']} |")
    lines += class_markdown(data.get("classes"))
    for section in data.get("extra_sections", []):
        lines += ["", section]
    lines += ["", "![accuracy by run](compare.png)", ""]
    return "\n".join(lines)


def class_markdown(classes: dict[str, Any] | None) -> list[str]:
    """compare.md's per-class sections: each run's gain over the control, and first attempts vs the first run."""
    if classes is None:
        return []
    tables = {run: t for run, t in classes["by_class"].items() if t is not None}
    if not tables:
        return ["", "No run's evaluation gives a failure class for its failed first attempts, so there are no "
                "per-class tables."]
    lines = ["", "## Per failure class: retry after reflection vs without (the control), per run", "",
             f"Paired on each run's own trials; p (Holm): {classes['correction']}.", "",
             "| run | failure class | failures | retry after reflection | retry without reflection | gain | "
             "95% interval | p | p (Holm) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run, table in tables.items():
        for cls, row in table["classes"].items():
            gain = row["gain"]
            lines.append(" | ".join([
                f"| {run}", f"`{cls}`", str(row["failures"]), rate_cell(row["retry"]),
                rate_cell(row["control"], "not run"), fmt_pts(gain["difference"]) if gain else "—",
                fmt_pts_ci(tuple(gain["difference_ci"])) if gain else "—",
                fmt_p_cell(gain["p_value"]) if gain else "—",
                fmt_p_cell(gain.get("p_holm")) if gain else "—"]) + " |")
    missing = [run for run, t in classes["by_class"].items() if t is None]
    if missing:
        lines += ["", f"Not classified (no failure class in its evaluation): {', '.join(missing)}."]
    if classes["first_attempt"]:
        lines += ["", "## First attempts by outcome class, each run vs the first row", "",
                  f"Paired by trial; p (Holm): {classes['correction']}.", "",
                  "| first | second | first attempt | first run | second run | change | 95% interval | p | p (Holm) |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for cmp in classes["first_attempt"]:
            for cls, row in cmp["first_attempt"].items():
                gain = row["gain"]
                lines.append(f"| {cmp['first']} | {cmp['second']} | `{cls}` | {row['before']} | {row['after']} | "
                             f"{fmt_pts(gain['difference'])} | {fmt_pts_ci(tuple(gain['difference_ci']))} | "
                             f"{fmt_p_cell(gain['p_value'])} | {fmt_p_cell(gain['p_holm'])} |")
    return lines


def rich_table(data: dict[str, Any]):
    """The accuracy table and the tests, for the terminal."""
    from rich.table import Table

    table = Table(title=f"runs on the same {data['trials']} trials of {data['task']}")
    table.add_column("run")
    for _, label in ACC_KEYS:
        table.add_column(label, justify="right")
    for r in data["runs"]:
        table.add_row(r["run"], *(_cell(r[k]) for k, _ in ACC_KEYS))
    table.caption = "\n".join(
        f"{c['metric']}: {c['second']} - {c['first']} = {100 * c['difference']:+.1f} pts, "
        f"p = {c['p_value']:.3g} (Holm {c['p_holm']:.3g})" for c in data["comparisons"])
    return table


def write_comparison(data: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """compare.json, compare.md and compare.png in out_dir; returns the Markdown file."""
    from r3rl.reporting import plots
    from r3rl.runtime.io import atomic_write_bytes, atomic_write_text, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", data)
    metrics = [k for k, _ in ACC_KEYS]
    cells = [[None if r[k] is None else (r[k]["value"], tuple(r[k]["ci"]) if r[k]["ci"] else None) for k in metrics]
             for r in data["runs"]]
    names = [label.split(" (")[0] for _, label in ACC_KEYS]  # "acc@2 without reflection", not the JSON key
    fig = plots.run_bars([r["run"] for r in data["runs"]], names, cells)
    atomic_write_bytes(out / "compare.png", plots.png_bytes(fig))
    atomic_write_text(out / "compare.md", markdown(data))
    return out / "compare.md"
