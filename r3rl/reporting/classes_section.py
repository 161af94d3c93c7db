"""The report's "Failure classes" section, and its summary for the model card.

Per failure class of the failed first attempts, before and after training: the count, the retry
success after a reflection and without one (the control), and the gain with its paired test and
Holm-adjusted p-value (r3rl.evaluation.classes; docs/failure-classes.md says what each means).
Then the first-attempt classes before vs after (paired by trial), and the transition table
(first-attempt class -> retry outcome) as a table and a heat-map. An evaluation whose failures
carry no class gets one sentence saying so, never a table of zeros.
"""

from __future__ import annotations

from typing import Any

from r3rl.evaluation.classes import HOLM, compare_classes
from r3rl.reporting import plots
from r3rl.reporting.class_results import EvalClasses, load_eval_classes
from r3rl.reporting.blocks import Block, Heading, Image, Para, TableBlock
from r3rl.reporting.run import RunData
from r3rl.reporting.wording import ALPHA, fmt_ci, fmt_pct, fmt_pts, fmt_pts_ci

__all__ = ["run_classes", "failure_class_blocks", "failure_class_card"]

NO_CLASSES = ("No failure classes: the evaluations' results.json and episodes.jsonl give no failure class for "
              "their failed first attempts (an evaluation made before verifiers classified failures, or a task "
              "that does not classify them), so there is no per-class table.")
NO_EVALS = "No evaluation results, so no failure classes: run `r3rl eval` before and after training."
LABELS = {"eval_before": "before", "eval_after": "after"}


def run_classes(run: RunData) -> list[tuple[str, EvalClasses]]:
    """(label, classes) of eval_before and eval_after, those that exist, in that order."""
    return [(label, load_eval_classes(run.run_dir / ev.name, ev))
            for label, ev in (("before", run.before), ("after", run.after)) if ev is not None]


def fmt_p_cell(p: float | None) -> str:
    """A p-value in a table cell: '0.0156', '< 0.0001', '—' when there is no test."""
    return "—" if p is None else "< 0.0001" if p < 1e-4 else f"{p:.3g}"


def rate_cell(rate: dict[str, Any] | None, missing: str = "—") -> str:
    """'87.5% (7/8) [52.9%, 97.8%]' from an evaluation.classes rate, `missing` when there is none."""
    if rate is None:
        return missing
    return f"{fmt_pct(rate['rate'])} ({rate['passes']}/{rate['n']}) {fmt_ci(tuple(rate['ci']))}"


def _class_order(tables: list[dict[str, Any]]) -> list[str]:
    """The classes of the later table first (its order: most frequent first), then those only earlier."""
    order: list[str] = []
    for table in reversed(tables):
        order += [c for c in table["classes"] if c not in order]
    return order


def _class_row(cls: str, label: str, table: dict[str, Any]) -> list[str]:
    row = table["classes"].get(cls)
    if row is None:
        return [cls, label, "0", "—", "—", "—", "—", "—", "—"]
    gain = row["gain"]
    return [
        cls, label, f"{row['failures']} ({fmt_pct(row['share'])})",
        rate_cell(row["retry"]), rate_cell(row["control"], "not run"),
        fmt_pts(gain["difference"]) if gain else "—", fmt_pts_ci(tuple(gain["difference_ci"])) if gain else "—",
        fmt_p_cell(gain["p_value"]) if gain else "—", fmt_p_cell(gain.get("p_holm")) if gain else "—",
    ]


def _findings(label: str, table: dict[str, Any]) -> str:
    """One sentence: the classes where reflection beats the control after Holm's correction."""
    tested = {c: row["gain"] for c, row in table["classes"].items() if row["gain"] is not None}
    if not tested:
        return f"{label.capitalize()} training the evaluation ran no control, so no gain is tested."
    found = [f"{c} ({fmt_pts(g['difference'])}, p (Holm) = {fmt_p_cell(g['p_holm'])})"
             for c, g in tested.items() if g["p_holm"] < ALPHA and g["difference"] != 0]
    if not found:
        return (f"{label.capitalize()} training, no class shows a significant gain of reflection over the control "
                f"at the {ALPHA:.0%} level after Holm's correction ({_classes_tested(len(tested))}).")
    return (f"{label.capitalize()} training, the retry after reflection differs significantly from the control "
            f"(Holm-adjusted, {ALPHA:.0%} level) on: " + "; ".join(found) + f" ({_classes_tested(len(tested))}).")


def _classes_tested(n: int) -> str:
    return f"{n} class tested" if n == 1 else f"{n} classes tested"


def _per_class_blocks(classified: list[tuple[str, EvalClasses]]) -> list[Block]:
    tables = [(label, c.by_class) for label, c in classified if c.by_class is not None]
    rows = [_class_row(cls, label, table) for cls in _class_order([t for _, t in tables]) for label, table in tables]
    tests = sorted({row["gain"]["test"] for _, t in tables for row in t["classes"].values() if row["gain"]})
    blocks: list[Block] = [
        Para("Each failed first attempt is grouped by the verifier's failure class (docs/failure-classes.md). Per "
             "class: how many failed so, the share of their retries after a reflection that passed, the same for "
             "the retry without a reflection (the control), and the gain, retry minus control on the same trials, "
             "with a paired test" + (f" ({'; '.join(tests)})" if tests else "") + ". One test per class means some "
             f"p-values fall under {ALPHA} by chance alone, so p (Holm) is each p-value adjusted by {HOLM}, within "
             "each evaluation. Brackets are 95% intervals."),
        TableBlock(["class", "eval", "failures (share)", "retry after reflection", "retry without reflection",
                    "gain", "95% CI of the gain", "p", "p (Holm)"], rows),
    ]
    blocks += [Para(_findings(label, table)) for label, table in tables]
    return blocks


def _first_attempt_blocks(evals: list[tuple[str, EvalClasses]]) -> list[Block]:
    """First-attempt outcome classes before vs after, paired by trial; nothing without both evals' trials."""
    records = dict((label, c.records) for label, c in evals)
    if records.get("before") is None or records.get("after") is None:
        return []
    try:
        cmp = compare_classes(records["before"], records["after"])
    except ValueError as e:
        return [Para(f"The first attempts' classes before and after training are not compared: {e}.", style="note")]
    n = cmp["trials"]
    rows = [[c, f"{r['before']} ({fmt_pct(r['before'] / n)})", f"{r['after']} ({fmt_pct(r['after'] / n)})",
             fmt_pts(r["gain"]["difference"]), fmt_pts_ci(tuple(r["gain"]["difference_ci"])),
             fmt_p_cell(r["gain"]["p_value"]), fmt_p_cell(r["gain"]["p_holm"])]
            for c, r in cmp["first_attempt"].items()]
    tests = sorted({r["gain"]["test"] for r in cmp["first_attempt"].values()})
    return [
        Heading(3, "First attempts before vs after training"),
        Para(f"How the {n} first attempts (the same trials before and after training) were judged: passed, or "
             f"failed in each class. Paired by trial ({'; '.join(tests)}); p (Holm) adjusted by {HOLM}."),
        TableBlock(["first attempt", "before", "after", "change", "95% CI", "p", "p (Holm)"], rows),
    ]


def _transition_blocks(evals: list[tuple[str, EvalClasses]]) -> list[Block]:
    blocks: list[Block] = []
    for label, c in sorted(evals, key=lambda lc: lc[0] != "after"):  # after training first
        table = (c.transitions or {}).get("retry")
        if not table or not table["from"]:
            continue
        counts = [[table["counts"][s].get(t, 0) for t in table["to"]] for s in table["from"]]
        if not blocks:
            blocks += [Heading(3, "Transitions: what each failure became on the retry"),
                       Para("Rows: the class of the failed first attempt; columns: the outcome of the retry after "
                            "the reflection (pass, or the class it failed with). Each row sums to its total.")]
        blocks.append(TableBlock(
            [f"{label} training: first attempt failed as", *table["to"], "total"],
            [[s, *(str(n) for n in row), str(table["totals"][s])] for s, row in zip(table["from"], counts)]))
        fig = plots.transition_heatmap(table["from"], table["to"], counts,
                                       title=f"Failure class -> retry outcome, {label} training")
        blocks.append(Image(f"transitions_{c.name}", f"Where each failure class went on the retry after reflection, "
                            f"{label} training (cells: count and share of the row)", plots.png_bytes(fig)))
    return blocks


def failure_class_blocks(run: RunData, evals: list[tuple[str, EvalClasses]] | None = None) -> list[Block]:
    """The "Failure classes" section (`evals` = run_classes(run), read again when not given)."""
    evals = run_classes(run) if evals is None else evals
    blocks: list[Block] = [Heading(2, "Failure classes")]
    if not evals:
        return blocks + [Para(NO_EVALS, style="note")]
    classified = [(label, c) for label, c in evals if c.by_class is not None]
    if not classified:
        return blocks + [Para(NO_CLASSES, style="note")]
    for label, c in evals:
        if c.by_class is None:
            blocks.append(Para(f"The evaluation {label} training gives no failure class for its failed first "
                               "attempts, so only the other one is shown per class.", style="note"))
    sources = sorted({c.source for _, c in classified})
    if sources == ["episodes.jsonl"]:
        blocks.append(Para("results.json has no per-class table, so it was computed from episodes.jsonl."))
    blocks += _per_class_blocks(classified)
    blocks += _first_attempt_blocks(classified)
    blocks += _transition_blocks(classified)
    return blocks


def failure_class_card(run: RunData) -> str:
    """Markdown for the model card: per class, failures and retry success before vs after, and the gain after."""
    evals = [(label, c) for label, c in run_classes(run) if c.by_class is not None]
    if not evals:
        return NO_CLASSES if run.before is not None or run.after is not None else NO_EVALS
    tables = dict((label, c.by_class) for label, c in evals)
    before, after = tables.get("before"), tables.get("after")
    lines = ["| failure class | failures before | failures after | retry after reflection, before | "
             "retry after reflection, after | gain over the control, after | p (Holm) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cls in _class_order([t for t in (before, after) if t is not None]):
        b = before["classes"].get(cls) if before else None
        a = after["classes"].get(cls) if after else None
        gain = a["gain"] if a else None
        lines.append(" | ".join([
            f"| `{cls}`", str(b["failures"]) if b else ("0" if before else "—"),
            str(a["failures"]) if a else ("0" if after else "—"),
            rate_cell(b["retry"]) if b else "—", rate_cell(a["retry"]) if a else "—",
            fmt_pts(gain["difference"]) if gain else "—", fmt_p_cell(gain.get("p_holm")) if gain else "—"]) + " |")
    lines += ["", "Failure classes are the verifier's names for how a first attempt failed. The gain is the retry "
              "after reflection minus the retry without one (the control), on the same trials, with a paired test; "
              f"p (Holm) is its p-value adjusted by {HOLM}. Brackets are 95% intervals."]
    return "\n".join(lines)
