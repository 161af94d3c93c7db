"""How numbers and verdicts are put into words in reports and the terminal summary."""

from __future__ import annotations

from r3rl.reporting.compare import Comparison
from r3rl.reporting.run import Accuracy

ALPHA = 0.05  # the significance level every verdict is stated at


def fmt_pct(x: float) -> str:
    """A fraction as a percentage with one decimal: 0.348 -> '34.8%'."""
    return f"{100.0 * x:.1f}%"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """A 95% interval in percent: '[28.1%, 42.6%]', or '—' when none was recorded."""
    return "—" if ci is None else f"[{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]"


def fmt_pts(x: float) -> str:
    """A difference of fractions in percentage points: 0.181 -> '+18.1 pts'.

    Rounded to 1e-9 first, so 0.5225 - 0.495 (0.027499999...) reads as 11/400 does: '+2.8 pts'.
    """
    return f"{round(100.0 * x, 9):+.1f} pts"


def fmt_pts_ci(ci: tuple[float, float]) -> str:
    return f"[{round(100.0 * ci[0], 9):+.1f}, {round(100.0 * ci[1], 9):+.1f}] pts"


def fmt_change(before: Accuracy | None, after: Accuracy | None) -> str:
    """After minus before in percentage points: '+18.1 pts'."""
    if before is None or after is None:
        return "—"
    return fmt_pts(after.value - before.value)


def fmt_num(x: float) -> str:
    """A metric value, short: four significant digits, thousands separators for big ones."""
    return f"{x:,.0f}" if abs(x) >= 10_000 else f"{x:.4g}"


def fmt_sci(x: float) -> str:
    """A value that may be tiny, in scientific notation so 1e-8 does not read as 0: '6.52e-09'."""
    return "0" if x == 0 else f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def fmt_discordant(first: str, first_only: int, second: str, second_only: int) -> str:
    """A paired test's discordant trials, named: 'only before training: 0, only after training: 10'."""
    return f"only {first}: {first_only}, only {second}: {second_only}"


def fmt_p(p: float) -> str:
    """A p-value: 'p = 0.0703', 'p < 0.0001'."""
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.3g}"


def significance_sentence(cmp: Comparison) -> str:
    """One plain sentence: how the metric moved, the paired difference with its interval, the
    test and its p-value, and whether that is significant at the 5% level."""
    label = cmp.label
    r = cmp.result
    if r is None:
        return f"{label} cannot be compared: {cmp.reason}."
    a, b = fmt_pct(r.first_rate), fmt_pct(r.second_rate)
    if a == b:
        moved = f"stayed at {a} ({cmp.first} and {cmp.second})"
    else:
        moved = f"{'rose' if r.second_rate > r.first_rate else 'fell'} from {a} {cmp.first} to {b} {cmp.second}"
    effect = f"paired difference {fmt_pts(r.difference)} (95% CI {fmt_pts_ci(r.difference_ci)}; {r.interval})"
    counts = f"{r.second_only} of {r.pairs} paired trials passed only {cmp.second}, {r.first_only} only {cmp.first}"
    test = f"{r.test}: {fmt_p(r.p_value)} ({counts})"
    level = f"{ALPHA:.0%} level"
    if r.p_value >= ALPHA or r.difference == 0:
        return f"{label} {moved}: {effect}; {test}; so this run does not show a significant effect at the {level}."
    verdict = f"a significant improvement at the {level}" if r.difference > 0 else \
        f"a significant drop at the {level}: it got worse"
    return f"{label} {moved}: {effect}; {test}: {verdict}."


def truncate(text: str, limit: int) -> str:
    """Shorten long text keeping its head and its tail: a final answer sits at the end."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head, tail = text[: (2 * limit) // 3], text[len(text) - (limit - (2 * limit) // 3) :]
    # Cut at word boundaries when there is one nearby, so no half-words at the seams.
    if " " in head[len(head) // 2 :]:
        head = head[: head.rindex(" ")]
    if " " in tail[: len(tail) // 2]:
        tail = tail[tail.index(" ") + 1 :]
    return f"{head.rstrip()} […{len(text) - len(head) - len(tail)} chars…] {tail.lstrip()}"
