"""Reliability checks a user can run on their own setup.

    verifier_check  hostile completions against any task's verifier (`r3rl check-task TASK`):
                    crashes, slow calls, hangs, executed code
    hostile         the seeded generator of those completions
    faults          kill -9 / failing-write injection into an r3rl command, for the resume tests
"""

from r3rl.checks.hostile import SENTINEL, hostile_case
from r3rl.checks.verifier_check import TaskReport, check_task, check_tasks, report_table

__all__ = ["SENTINEL", "hostile_case", "TaskReport", "check_task", "check_tasks", "report_table"]
