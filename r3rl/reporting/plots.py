"""Matplotlib figures for run reports: training curves and before/after accuracy.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly, not
through `pyplot`: pyplot keeps global state and picks a GUI backend, which breaks
on headless machines and leaks figures when a report is built inside a long-lived
process (a notebook, a trainer). Every function returns a Figure; `png_bytes`
renders it, so the caller decides where the bytes go (a file, a data URI).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Raw per-step RL metrics are noisy; over this many points a rolling mean is drawn
# on top of the raw line so the trend is readable at 1,750 steps.
SMOOTH_MIN_POINTS = 20

_FIGSIZE = (6.4, 3.6)
_DPI = 110
_RAW_COLOR = "#9bb7d4"
_TREND_COLOR = "#1f4e79"
_BEFORE_COLOR = "#9e9e9e"
_AFTER_COLOR = "#2e7d32"


def _new_figure(figsize: tuple[float, float] = _FIGSIZE) -> Figure:
    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` points, ignoring NaN; the first points average what exists."""
    out: list[float] = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def metric_curve(
    steps: Sequence[int], values: Sequence[float], *, title: str, ylabel: str, rate: bool = False
) -> Figure:
    """One training metric over optimizer steps; a rolling mean is overlaid on long runs.

    A rate (a share between 0 and 1: reward, retry success) is drawn on the whole 0-1 axis: zoomed to
    its own range, step-to-step noise between 0.25 and 0.55 reads as a trend. Values outside 0-1 (a
    task with another reward scale) keep the automatic range rather than being cut off."""
    fig = _new_figure()
    ax = fig.add_subplot()
    long_run = len(values) >= SMOOTH_MIN_POINTS
    ax.plot(
        steps,
        values,
        color=_RAW_COLOR if long_run else _TREND_COLOR,
        linewidth=1.0 if long_run else 1.8,
        marker=None if long_run else "o",
        markersize=3.5,
        label="per step",
    )
    if long_run:
        window = max(5, len(values) // 20)
        ax.plot(
            steps,
            rolling_mean(values, window),
            color=_TREND_COLOR,
            linewidth=2.0,
            label=f"rolling mean ({window} steps)",
        )
        ax.legend(loc="best", fontsize=8, frameon=False)
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    finite = [v for v in values if not math.isnan(v)]
    if rate and finite and 0.0 <= min(finite) and max(finite) <= 1.0:
        ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    return fig


def eval_curves(series: dict[str, tuple[Sequence[int], Sequence[float]]]) -> Figure:
    """Periodic eval accuracies (fractions) over steps, one line each, drawn in percent."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, (steps, values) in series.items():
        ax.plot(steps, [100.0 * v for v in values], marker="o", markersize=4, label=label)
    ax.set_title("Periodic eval accuracy during training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return fig


def accuracy_bars(
    labels: Sequence[str],
    before: Sequence[tuple[float, tuple[float, float] | None] | None],
    after: Sequence[tuple[float, tuple[float, float] | None] | None],
) -> Figure:
    """Grouped bars of accuracy before/after training with 95% interval error bars.

    before[i] / after[i] is (value, (lo, hi) or None) for labels[i], all fractions,
    or None when that eval is missing; the bar is then left out, not drawn at zero,
    so a missing eval cannot be misread as 0% accuracy.
    """
    fig = _new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    width = 0.38
    for offset, name, color, cells in (
        (-width / 2, "before training", _BEFORE_COLOR, before),
        (width / 2, "after training", _AFTER_COLOR, after),
    ):
        xs, heights, err_lo, err_hi = [], [], [], []
        for i, cell in enumerate(cells):
            if cell is None:
                continue
            value, ci = cell
            xs.append(i + offset)
            heights.append(100.0 * value)
            lo, hi = ci if ci is not None else (value, value)
            err_lo.append(100.0 * max(0.0, value - lo))
            err_hi.append(100.0 * max(0.0, hi - value))
        if not xs:
            continue
        ax.bar(
            xs, heights, width, label=name, color=color,
            yerr=[err_lo, err_hi], capsize=4, error_kw={"elinewidth": 1.2},
        )
        # Value labels sit at the foot of the bar, clear of the error bar through its top;
        # a bar too short to hold one gets it above its error bar instead.
        for x, h, up in zip(xs, heights, err_hi):
            if h >= 8:
                ax.text(x, 1.5, f"{h:.1f}", ha="center", va="bottom", fontsize=8, color="white", fontweight="bold")
            else:
                ax.text(x, h + up + 1.5, f"{h:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Eval accuracy before and after training (95% intervals)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def run_bars(labels: Sequence[str], metrics: Sequence[str],
             cells: Sequence[Sequence[tuple[float, tuple[float, float] | None] | None]]) -> Figure:
    """Grouped bars, one group per metric and one bar per run, with 95% interval error bars.

    cells[r][m] is (value, (lo, hi) or None) of run r on metric m, or None when that run did
    not measure it: the bar is then left out, never drawn at zero.
    """
    fig = _new_figure((max(6.4, 1.2 * len(labels) * len(metrics)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    colors = [_BEFORE_COLOR, _AFTER_COLOR, "#1f4e79", "#c62828", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037"]
    for r, label in enumerate(labels):
        xs, heights, err_lo, err_hi = [], [], [], []
        for m, cell in enumerate(cells[r]):
            if cell is None:
                continue
            value, ci = cell
            lo, hi = ci if ci is not None else (value, value)
            xs.append(m - 0.4 + width * (r + 0.5))
            heights.append(100.0 * value)
            err_lo.append(100.0 * max(0.0, value - lo))
            err_hi.append(100.0 * max(0.0, hi - value))
        if xs:
            ax.bar(xs, heights, width, label=label, color=colors[r % len(colors)],
                   yerr=[err_lo, err_hi], capsize=3, error_kw={"elinewidth": 1.0})
            # at the foot of the bar, as in accuracy_bars: above the error bar a label can leave the axes
            for x, h, up in zip(xs, heights, err_hi):
                if h >= 8:
                    ax.text(x, 1.5, f"{h:.1f}", ha="center", va="bottom", fontsize=7, color="white", fontweight="bold")
                else:
                    ax.text(x, h + up + 1.0, f"{h:.1f}", ha="center", va="bottom", fontsize=7)
    for m in range(len(metrics)):
        if all(row[m] is None for row in cells):  # an empty slot says why, rather than looking like 0%
            ax.text(m, 3, "not measured", ha="center", va="bottom", fontsize=8, color="#616161")
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_xlim(-0.6, len(metrics) - 0.4)  # room for the last metric's name
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Runs evaluated on the same trials (95% intervals)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # beside: bars reach 100%
    return fig


def transition_heatmap(sources: Sequence[str], outcomes: Sequence[str], counts: Sequence[Sequence[int]],
                       *, title: str) -> Figure:
    """Failure class of the first attempt (rows) -> outcome of the retry (columns).

    counts[i][j] is how many failures of class sources[i] ended as outcomes[j]. A cell's colour is
    its share of the row (where that class's failures went), so a small class reads as clearly as a
    big one; each cell is written as "count" over "share %", empty cells as nothing.
    """
    rows, cols = len(sources), len(outcomes)
    longest = max((len(s) for s in [*sources, *outcomes]), default=4)
    fig = _new_figure((max(5.0, 1.0 * cols + 0.07 * longest + 2.0), max(2.6, 0.55 * rows + 0.06 * longest + 1.6)))
    ax = fig.add_subplot()
    shares = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(rows):
        for j in range(cols):
            n = counts[i][j]
            if n:
                share = shares[i][j]
                ax.text(j, i, f"{n}\n{100 * share:.0f}%", ha="center", va="center", fontsize=8,
                        color="white" if share > 0.55 else "#1b1b1b")
    ax.set_xticks(range(cols), outcomes, rotation=30 if longest > 10 else 0, ha="right" if longest > 10 else "center")
    ax.set_yticks(range(rows), [f"{s} (n={sum(r)})" for s, r in zip(sources, counts)])
    ax.set_xlabel("outcome of the retry")
    ax.set_ylabel("first attempt failed as")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the row", fraction=0.05)
    return fig


def diversity_curve(distinct_2: tuple[Sequence[int], Sequence[float]] | None,
                    duplicate_share: tuple[Sequence[int], Sequence[float]] | None) -> Figure:
    """distinct-2 and the duplicate share of each step's reflections, (steps, values) each, one axis.

    Both are fractions. Mode collapse onto one template reads as the distinct-2 line falling and
    the duplicate share rising. A series given as None is left out, never drawn as zeros.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    for series, label, color in ((distinct_2, "distinct-2 (distinct word bigrams / all)", _TREND_COLOR),
                                 (duplicate_share, "duplicate share (exact copies)", "#c62828")):
        if series is None:
            continue
        steps, values = series
        long_run = len(values) >= SMOOTH_MIN_POINTS
        ax.plot(steps, values, color=color, linewidth=1.0 if long_run else 1.8, alpha=0.45 if long_run else 1.0,
                marker=None if long_run else "o", markersize=3.5, label=label)
        if long_run:
            window = max(5, len(values) // 20)
            ax.plot(steps, rolling_mean(values, window), color=color, linewidth=2.0)
    ax.set_title("Diversity of each step's reflections")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return fig
