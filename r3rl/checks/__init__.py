"""Hostile-input checks of a task's verifier, which a user runs on their own tasks (`r3rl check-task`).

    verifier_check  hostile completions against any task's verifier (`r3rl check-task TASK`):
                    crashes, slow calls, hangs, executed code
    hostile         the seeded generator of those completions

Needs only r3rl.tasks and r3rl.types. The reliability suite's own harness (kill -9 and disk-fault
injection, the figures of RELIABILITY.md) lives in tests/reliability/; the file checks used when
loading models and checkpoints are r3rl.runtime.file_checks.
"""

from r3rl.checks.hostile import SENTINEL, hostile_case
from r3rl.checks.verifier_check import TaskReport, check_task, check_tasks, report_table

__all__ = ["SENTINEL", "hostile_case", "TaskReport", "check_task", "check_tasks", "report_table"]
