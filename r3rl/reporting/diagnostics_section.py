"""The report's "Reflection diagnostics" section: what the reflections look like, in the evals and per step.

From the evaluations (results.json's `reflection_diagnostics`, or computed from episodes.jsonl's
reflection texts): length median / p90 / max, distinct-n, the duplicate share, the most repeated
reflections with their counts, and the retry success of repeated vs unique reflections. From
metrics.jsonl (the trainer's `reflection_*` numbers per step): the same numbers first vs final,
and a line plot of distinct-2 and the duplicate share, where mode collapse onto one template
shows as a falling and a rising line. Definitions: r3rl.evaluation.diagnostics.
"""

from __future__ import annotations

from typing import Any

from r3rl.reporting import plots
from r3rl.evaluation.diagnostics import MAX_SHOWN_CHARS
from r3rl.reporting.class_results import EvalClasses
from r3rl.reporting.blocks import Block, Heading, Image, Para, TableBlock
from r3rl.reporting.run import RunData, metric_series
from r3rl.reporting.wording import fmt_num, fmt_pct

__all__ = ["diagnostics_blocks", "STEP_METRICS"]

# metrics.jsonl key -> what it is, in the order shown
STEP_METRICS: dict[str, str] = {
    "reflection_len_p50": "reflection length, median (tokens)",
    "reflection_len_p90": "reflection length, p90 (tokens)",
    "reflection_len_max": "reflection length, max (tokens)",
    "reflection_distinct_1": "distinct-1 (distinct words / all)",
    "reflection_distinct_2": "distinct-2 (distinct word bigrams / all)",
    "reflection_distinct_3": "distinct-3",
    "reflection_duplicate_share": "duplicate share (1 - distinct texts / texts)",
    "reflection_repeated_share": "repeated share (texts that occur twice or more)",
    "reflection_repeated_retry_success": "retry success of repeated reflections",
    "reflection_unique_retry_success": "retry success of unique reflections",
}
CURVE_KEYS = ("reflection_distinct_2", "reflection_duplicate_share")
MAX_QUOTED = 5  # most repeated reflections quoted per evaluation
NO_DIAGNOSTICS = ("No reflection diagnostics: no evaluation recorded the reflections of its failed first attempts "
                  "and metrics.jsonl has no reflection_distinct_2 or reflection_duplicate_share.")


def _num(x: Any) -> str:
    return "—" if x is None else fmt_num(float(x))


def _success(cell: dict[str, Any] | None, none: str) -> str:
    if cell is None or not cell.get("n"):
        return none
    return f"{fmt_pct(cell['rate'])} ({cell['passes']}/{cell['n']})"


def _quote(text: str) -> str:
    """A repeated reflection as quoted: the diagnostics keep its first MAX_SHOWN_CHARS characters."""
    return text + " […]" if len(text) >= MAX_SHOWN_CHARS else text


def _eval_rows(diags: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    def row(label: str, get) -> list[str]:
        return [label, *(get(d) for _, d in diags)]

    unit = "/".join(sorted({d["length"]["unit"] for _, d in diags}))
    success = lambda d, k: _success((d.get("retry_success") or {}).get(k), f"— (no {k} reflection)")  # noqa: E731
    return [
        row("reflections (of failed first attempts)", lambda d: str(d["n"])),
        row(f"length, median ({unit})", lambda d: _num(d["length"]["median"])),
        row(f"length, p90 ({unit})", lambda d: _num(d["length"]["p90"])),
        row(f"length, max ({unit})", lambda d: _num(d["length"]["max"])),
        row("distinct-1", lambda d: _num(d["distinct_1"])),
        row("distinct-2", lambda d: _num(d["distinct_2"])),
        row("distinct-3", lambda d: _num(d["distinct_3"])),
        row("distinct texts", lambda d: str(d["distinct"])),
        row("duplicate share", lambda d: fmt_pct(d["duplicate_share"])),
        row("repeated share", lambda d: fmt_pct(d["repeated_share"])),
        row("retry success, repeated reflections", lambda d: success(d, "repeated")),
        row("retry success, unique reflections", lambda d: success(d, "unique")),
    ]


def _eval_blocks(evals: list[tuple[str, EvalClasses]]) -> list[Block]:
    diags = [(label, c.diagnostics) for label, c in evals if c.diagnostics is not None]
    if not diags:
        return []
    blocks: list[Block] = [
        Heading(3, "In the evaluations"),
        Para("The reflections written after the failed first attempts. distinct-n: distinct word n-grams over "
             "all n-grams of the set (1 = nothing repeats); duplicate share: the share of reflections that copy "
             "another one word for word (ignoring case and spacing); repeated share: the share that occur twice "
             "or more. Retry success of repeated vs unique reflections says whether the repeated text still "
             "fixes failures; it describes, it does not test."),
        TableBlock(["measure", *(f"{label} training" for label, _ in diags)], _eval_rows(diags)),
    ]
    quoted = [[f"{label} training", str(item["count"]), _quote(str(item["text"]))]
              for label, d in diags for item in d.get("most_repeated", [])[:MAX_QUOTED]]
    if quoted:
        blocks.append(TableBlock(["eval", "copies", "most repeated reflection"], quoted, long_text=True))
    else:
        blocks.append(Para("No reflection is repeated word for word in "
                           + " or ".join(f"the evaluation {label} training" for label, _ in diags) + "."))
    return blocks


def _direction(xs: list[int], ys: list[float], what: str) -> str:
    return f"{what} went from {fmt_num(ys[0])} at step {xs[0]} to {fmt_num(ys[-1])} at step {xs[-1]}"


def _training_blocks(run: RunData) -> list[Block]:
    series = {k: metric_series(run.metrics, k) for k in STEP_METRICS}
    if not any(series[k][1] for k in CURVE_KEYS):
        return []
    rows = [[meaning, fmt_num(ys[0]), fmt_num(ys[-1]), str(xs[-1])]
            for key, meaning in STEP_METRICS.items() if (xs := series[key][0]) and (ys := series[key][1])]
    moves = [_direction(*series[k], label) for k, label in (("reflection_distinct_2", "distinct-2"),
                                                             ("reflection_duplicate_share", "the duplicate share"))
             if series[k][1]]
    blocks: list[Block] = [
        Heading(3, "During training"),
        Para("Each optimizer step's sampled reflections: " + "; ".join(moves) + ". A policy collapsing onto one "
             "template shows as distinct-2 falling and the duplicate share rising."),
        TableBlock(["measure, per step", "first", "final", "final step"], rows),
    ]
    last = next((r for r in reversed(run.metrics) if r.get("reflection_most_repeated")), None)
    if last is not None:
        blocks.append(TableBlock(
            [f"copies at step {last['step']}", "most repeated reflection"],
            [[str(item.get("count")), _quote(str(item.get("text", "")))]
             for item in last["reflection_most_repeated"][:MAX_QUOTED]], long_text=True))
    fig = plots.diversity_curve(*(series[k] if series[k][1] else None for k in CURVE_KEYS))
    blocks.append(Image("reflection_diversity", "distinct-2 and duplicate share of each step's reflections",
                        plots.png_bytes(fig)))
    return blocks


def diagnostics_blocks(run: RunData, evals: list[tuple[str, EvalClasses]]) -> list[Block]:
    """The "Reflection diagnostics" section; `evals` is classes_section.run_classes(run)."""
    blocks: list[Block] = [Heading(2, "Reflection diagnostics")]
    body = _eval_blocks(evals) + _training_blocks(run)
    return blocks + (body or [Para(NO_DIAGNOSTICS, style="note")])
