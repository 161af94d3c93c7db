"""The reliability run's figures as Markdown (what RELIABILITY.md quotes).

    python -m tests.reliability.figures runs/reliability     (from the repository root; `make reliability`)

reads kills-<command>.json and hostile-<task>.json written by `make reliability`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from r3rl.checks.verifier_check import TaskReport, report_table


def figures(folder: Path) -> str:
    lines = ["| command | kills survived | kills by point | runs completed | rows in the reference | rows lost | rows duplicated |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for f in sorted(folder.glob("kills-*.json")):
        k = json.loads(f.read_text())
        points = ", ".join(f"{p} {n}" for p, n in sorted(k["kills_by_point"].items()))
        lines.append(f"| r3rl {f.stem[6:]} | {k['kills']} | {points} | {k['runs_completed']} | {k['rows_reference']} | "
                     f"{k['lost']} | {k['duplicated']} |")
    reports = []
    for f in sorted(folder.glob("hostile-*.json")):
        for r in json.loads(f.read_text()):
            r.pop("clean", None)
            reports.append(TaskReport(**r))
    return "\n".join(lines) + "\n\n" + report_table(reports) + "\n"


if __name__ == "__main__":
    print(figures(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reliability")), end="")
