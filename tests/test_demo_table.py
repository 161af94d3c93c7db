"""The README's demo table is what `make demo` prints on the CI machine (the CPU kind that made it).

The README names the CPU and says other CPUs may differ in the last digits (their matrix kernels
round differently); on the machine kind CI runs on, a fresh clone must print the table exactly.
The demo runs as `make demo` runs it (`r3rl demo` in its own process, the default thread count),
so the figures are the command's, not a test process's with torch pinned to one thread.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"acc@1 (first try)": "acc@1", "**acc@2 (retry after reflection)**": "acc@2",
        "acc@2 without reflection (control)": "acc@2_no_reflection"}


def readme_table() -> dict[str, tuple[str, str]]:
    """metric -> (before, after) cells of the README's demo table, e.g. ("50.5% [45.6%, 55.4%]", ...)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| metric | before training | after training | change |"):]
    out = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ROWS:
            out[ROWS[cells[0]]] = (cells[1].strip("*"), cells[2].strip("*"))
    return out


def cell(result: dict, name: str) -> str:
    lo, hi = result[f"{name}_ci"]
    return f"{100 * result[name]:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%]"


def test_readme_table_parses():
    assert set(readme_table()) == set(ROWS.values())


@pytest.mark.slow
def test_make_demo_prints_the_readme_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "r3rl", "demo", "--output", str(tmp_path / "out")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    before = json.loads((tmp_path / "out" / "eval_before" / "results.json").read_text())
    after = json.loads((tmp_path / "out" / "eval_after" / "results.json").read_text())
    measured = {name: (cell(before, name), cell(after, name)) for name in ROWS.values()}
    assert measured == readme_table(), (
        "`make demo` printed other figures than README.md's table on this machine; if the CPU kind or the "
        "locked versions changed, update the table and say why")
    assert re.search(r"demo\] total", res.stdout)
