"""Deliberately broken verifiers: the hostile check must catch each (it is a test that can fail)."""

from __future__ import annotations

import time

from r3rl.tasks import Task, Verdict


class _Base(Task):
    name = "broken"

    def load_examples(self, split="train", n=None, seed=0):
        return [{"id": str(i), "x": i} for i in range(n or 4)]

    def prompt(self, example):
        return "anything"


class EvalTask(_Base):
    """Runs the answer with eval: every code payload that is valid Python executes."""

    def verify(self, example, completion):
        start, end = completion.find("<answer>"), completion.find("</answer>")
        body = completion[start + 8:end] if 0 <= start < end else completion
        try:
            eval(body[:2000])  # noqa: S307 - the point of this task
        except BaseException:  # noqa: BLE001
            pass
        return Verdict(False, "no")


class RaisingTask(_Base):
    def verify(self, example, completion):
        return Verdict(True, "ok") if len(completion) % 7 else int("x")  # ValueError one time in seven


class HangingTask(_Base):
    def verify(self, example, completion):
        if "[TOOL_CALLS]" in completion:
            time.sleep(60)
        return Verdict(False, "no")


class WarmUpHangingTask(_Base):
    """Hangs on "0", one of the checker's untimed warm-up answers (r3rl.checks.verifier_check.WARM_UP)."""

    def verify(self, example, completion):
        if completion == "0":
            time.sleep(60)
        return Verdict(False, "no")
