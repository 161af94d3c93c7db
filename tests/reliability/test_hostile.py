"""Hostile completions against every registered task's verifier (and a user task by import path).

Short run: 2,000 cases per task. R3RL_RELIABILITY=long: 100,000 per task, figures written to
runs/reliability/hostile-<task>.json (what RELIABILITY.md quotes). bfcl reads the rows shipped in
tests/fixtures/bfcl, so it runs where the bfcl-eval package is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from r3rl.checks.hostile import FAMILIES, SENTINEL, hostile_case
from r3rl.checks.verifier_check import check_task, report_table, to_json
from r3rl.tasks import available_tasks
from tests.reliability.conftest import LONG
from tests.reliability.harness import ROOT

CASES = 100_000 if LONG else 2_000
# Options for tasks whose examples come from files (the others build their own examples).
TASK_OPTIONS = {"bfcl": {"path": str(ROOT / "tests" / "fixtures" / "bfcl")}}
# The bound each verifier promises per call. math grades in a worker process with math-verify's own
# 1 s alarm inside and a hard kill at its timeout_s (5 s): on a loaded machine an input that runs into
# the alarm takes just over 1 s by design, so its bound is the kill plus the worker's restart.
TIME_LIMITS = {"math": 5.5}


def test_generator_is_seeded_and_covers_every_family():
    cases = [hostile_case(0, i, {"nums": [3, 5], "target": 8}) for i in range(3000)]
    assert cases[:50] == [hostile_case(0, i, {"nums": [3, 5], "target": 8}) for i in range(50)]
    assert cases[:50] != [hostile_case(1, i, {"nums": [3, 5], "target": 8}) for i in range(50)]
    assert {f for f, _ in cases} == set(FAMILIES)
    assert sum(SENTINEL in t for _, t in cases) > 300  # code payloads are planted often
    assert max(len(t) for _, t in cases) >= 100_000  # megabyte-scale strings occur


@pytest.mark.parametrize("task", sorted(available_tasks()))
def test_registered_verifier_survives_hostile_input(task):
    rep = check_task(task, options=TASK_OPTIONS.get(task, {}), cases=CASES, seed=0,
                     time_limit=TIME_LIMITS.get(task, 1.0))
    if rep.skipped:
        pytest.skip(f"{task}: cannot build examples here ({rep.skipped})")
    if LONG:
        out = ROOT / "runs" / "reliability"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"hostile-{task}.json").write_text(to_json([rep]))
    assert rep.cases == CASES
    assert rep.clean, report_table([rep]) + "\n" + "\n".join(map(str, rep.findings))


def test_check_catches_execution_crashes_and_hangs():
    rep = check_task("tests.reliability.broken_tasks:EvalTask", cases=400, seed=0)
    assert rep.executions > 0 and any(f["kind"] == "execution" for f in rep.findings)
    rep = check_task("tests.reliability.broken_tasks:RaisingTask", cases=200, seed=0)
    assert rep.crashes > 10 and "ValueError" in rep.findings[0]["detail"]
    rep = check_task("tests.reliability.broken_tasks:HangingTask", cases=300, seed=0, hard_limit=1.0)
    assert rep.hangs >= 1 and rep.cases == 300  # killed and went on past the hanging case
    rep = check_task("tests.reliability.broken_tasks:WarmUpHangingTask", cases=50, seed=0, hard_limit=0.5)
    assert rep.hangs == 1 and rep.findings[0]["family"] == "warm-up" and not rep.clean  # not a silent wait


def test_check_task_command_on_the_example_task():
    """`r3rl check-task mypkg:MyTask` from the repository root; exit status 1 when a verifier is broken."""
    code = "import sys; sys.path = [p for p in sys.path if p not in ('', '.')]; from r3rl.cli import main; sys.exit(main())"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, "check-task", "examples.custom_task.my_task:MyTask",
                           "--cases", "1000", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| examples.custom_task.my_task:MyTask | 1,000 | 0 | 0 | 0 | 0 |" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", code, "check-task", "tests.reliability.broken_tasks:RaisingTask",
                           "--cases", "100", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "crash" in proc.stdout
