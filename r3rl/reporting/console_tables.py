"""The terminal tables of one evaluation (`r3rl eval`, the demo): accuracies with intervals, the
per-group results, and what the reflections fixed per failure class. They read an EvalResult
(evaluation/result.py), the typed results.json."""

from __future__ import annotations

import re
from typing import Any

from rich.table import Table

from r3rl.evaluation.result import EvalResult
from r3rl.reporting.run import ACC_KEYS


def results_table(results: EvalResult, title: str = "evaluation") -> Table:
    """A rich table of one evaluation's accuracies, with the paired acc@2 vs control test as its caption."""
    table = Table(title=f"{title}: {results.task} / {results.model} (n={results.trials})")
    table.add_column("metric")
    table.add_column("accuracy", justify="right")
    table.add_column("95% interval", justify="right")
    for key in sorted(results.acc, key=_metric_order):
        acc = results.acc[key]
        lo, hi = acc.ci
        table.add_row(_LABELS.get(key, key), f"{acc.value:.1%}", f"[{lo:.1%}, {hi:.1%}]")
    cmp = (results.comparisons or {}).get("acc@2_vs_no_reflection")
    if cmp:
        lo, hi = cmp["difference_ci"]
        table.caption = (f"acc@2 - control: {100 * cmp['difference']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}], "
                         f"p = {cmp['p_value']:.3g} ({cmp['test']})")
    return table


_LABELS = dict(ACC_KEYS)  # the report's names: "acc@2 without reflection (control)", not the results.json key


def _metric_order(key: str) -> tuple[int, str]:
    """acc@1, acc@2, acc@2_no_reflection, acc@3, ..., acc@10 (by the number, not by its first digit)."""
    m = re.match(r"acc@(\d+)", key)
    return (int(m.group(1)) if m else 1 << 30, key)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A table whose first column (the row's name) is left-aligned and the others (numbers) right-aligned."""
    table = Table(title=title)
    for k, column in enumerate(columns):
        table.add_column(column, justify="left" if k == 0 else "right")
    return table


def group_table(results: EvalResult) -> Table | None:
    """A rich table of results.by_group (Task.breakdown / Task.summarize), or None when there is none."""
    if not (groups := (results.by_group or {}).get("groups")):
        return None
    table = _table(f"by group: {results.task}", ("group", "n", "acc@1", "acc@2"))
    for name, g in groups.items():
        table.add_row(name, str(g["n"]), f"{g['acc@1']:.1%}", f"{g['acc@2']:.1%}")
    for name, g in results.by_group.items():  # task-level summaries, e.g. BFCL's non_live_ast / live_ast
        if name != "groups" and isinstance(g, dict) and "acc@1" in g:
            partial = "" if g.get("complete", True) else " (partial)"
            table.add_row(f"{name}{partial}", str(g.get("n", "")), f"{g['acc@1']:.1%}", f"{g['acc@2']:.1%}")
    return table


def class_table(results: EvalResult) -> Table | None:
    """A rich table of results.by_class: what the reflections fixed, per failure class; None without classes."""
    by_class = results.by_class or {}
    classes = by_class.get("classes") or {}
    if not classes:
        return None
    table = _table(f"failed first attempts by class: {results.task} ({by_class.get('failures')} failures)",
                   ("class", "failures", "retry after reflection", "retry without (control)", "gain (pts)", "p (Holm)"))

    def rate(cell: dict[str, Any] | None) -> str:
        return "not run" if cell is None else f"{cell['rate']:.1%} ({cell['passes']}/{cell['n']})"

    for name, row in classes.items():
        gain = row.get("gain")
        table.add_row(name, str(row["failures"]), rate(row.get("retry")), rate(row.get("control")),
                      "" if gain is None else f"{100 * gain['difference']:+.1f}",
                      "" if gain is None else f"{gain['p_holm']:.3g}")
    table.caption = f"paired test per class ({by_class.get('correction')})"
    return table
