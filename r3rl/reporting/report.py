"""`r3rl report`: turn a run folder into report.md, a self-contained report.html and PNG plots.

The two entry points: `build_report(run_dir)` (what `r3rl report RUN_DIR` and the demo call)
and `summary_table(run_dir)` (the before/after table printed to the terminal). The parts:
run.py reads the folder, compare.py makes the paired tests, document.py builds the content,
render.py + templates/ write it, plots.py draws the figures.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

from r3rl.reporting.compare import before_after
from r3rl.reporting.document import Heading, Image, report_blocks
from r3rl.reporting.render import render_html, render_markdown
from r3rl.reporting.run import ACC_KEYS, ReportError, load_evals, load_run
from r3rl.reporting.wording import fmt_change, fmt_ci, fmt_pct, significance_sentence
from r3rl.runtime.io import atomic_write_bytes

__all__ = ["ReportError", "build_report", "summary_table"]


def build_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write report.md, report.html and report/*.png into run_dir; return report.html's path.

    Raises ReportError for a folder with no run in it or a malformed file, before writing anything.
    """
    run = load_run(run_dir)
    blocks = report_blocks(run)
    image_dir = run.run_dir / "report"
    image_dir.mkdir(exist_ok=True)
    for blk in blocks:
        if isinstance(blk, Image):
            atomic_write_bytes(image_dir / f"{blk.name}.png", blk.png)
    atomic_write_bytes(run.run_dir / "report.md", render_markdown(blocks).encode("utf-8"))
    html_path = run.run_dir / "report.html"
    title = blocks[0].text if isinstance(blocks[0], Heading) else "r3rl run report"
    atomic_write_bytes(html_path, render_html(blocks, title).encode("utf-8"))
    return html_path


def summary_table(run_dir: str | os.PathLike[str]) -> Table:
    """Before/after accuracies for the terminal, with the paired acc@2 verdict as the caption."""
    root = Path(run_dir)
    before, after = load_evals(root)
    table = Table(title=f"r3rl eval: {root.resolve().name}")
    table.add_column("metric", justify="left")
    for col in ("before", "after", "change"):  # a number split over two lines is misread
        table.add_column(col, justify="right", no_wrap=True)
    for key, label in ACC_KEYS:
        b = before.acc.get(key) if before else None
        a = after.acc.get(key) if after else None
        table.add_row(
            label,
            f"{fmt_pct(b.value)} {fmt_ci(b.ci)}" if b else "—",
            f"{fmt_pct(a.value)} {fmt_ci(a.ci)}" if a else "—",
            fmt_change(b, a),
        )
    if before is None and after is None:
        table.caption = "No eval_before/ or eval_after/ results in this run folder."
    else:
        table.caption = significance_sentence(before_after("acc@2", before, after))
    return table
