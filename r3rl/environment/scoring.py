"""The scorer: runs a task's verifier on generated turns, apart from generation.

A verifier that raises is a bug in the task, not a weak model: each exception is a failed
verdict of its own class (`VERIFIER_ERROR`), reported with the example id, counted, and past
`rollout.max_verifier_errors` the run stops instead of training on it.
"""

from __future__ import annotations

import sys
from typing import Any

from r3rl.errors import R3RLError
from r3rl.environment.trajectory import Turn
from r3rl.types import Verdict

# The failure class of a verdict the verifier could not give (it raised): outside every task's vocabulary,
# so a broken verifier shows as its own row of the per-class tables, never as a weak model's failure.
VERIFIER_ERROR = "verifier_error"


class VerifierError(R3RLError, RuntimeError):
    """Too many verifier exceptions: the task's verify() is broken, so the run stops."""


class Scorer:
    """The task's verifier behind one counted, bounded entry point."""

    def __init__(self, task: Any, max_errors: int):
        self.task = task
        self.max_errors = max_errors
        self.errors = 0  # verifier exceptions so far: scored as failures, counted, logged, bounded

    def verdict(self, example: Any, text: str) -> Verdict:
        """The task's verdict on `text`; an exception in the verifier is a failed verdict, counted and logged."""
        name = type(self.task).__name__
        try:
            verdict = self.task.verify(example, text)
            if not isinstance(verdict, Verdict):
                raise TypeError(f"returned {type(verdict).__name__}, not Verdict")
        except Exception as e:  # noqa: BLE001 - any verifier bug is counted the same way
            self.errors += 1
            example_id = self.task.example_id(example)
            print(f"r3rl: {name}.verify raised on example {example_id}: {type(e).__name__}: {e} "
                  f"(verifier error {self.errors}; scored as a failure)", file=sys.stderr, flush=True)
            if self.errors > self.max_errors:
                raise VerifierError(
                    f"{name}.verify raised {self.errors} times (more than rollout.max_verifier_errors="
                    f"{self.max_errors}); the last, on example {example_id}: {type(e).__name__}: {e}. "
                    "Fix the verifier, or raise the limit to keep going."
                ) from None
            return Verdict(False, f"verifier error: {type(e).__name__}", VERIFIER_ERROR)
        return verdict

    def judge(self, example: Any, turn: Turn) -> Verdict:
        """`turn`'s verdict, computed once: a turn judged again (to decide on another round, then for its
        record) keeps its first verdict, so each generated turn costs one verifier call."""
        if turn.verdict is None:
            turn.verdict = self.verdict(example, turn.text)
        return turn.verdict
