"""A turn structure of its own, written only against the environment's hooks: the retry first sees a tool's output.

    user(task)  assistant(failed attempt)  user(reflect + "you may write <calc>expression</calc>")
    assistant(reflection)                                   <- trained (the reflection objective)
    tool("calc: 12 + 34 = 46")                              <- new: the calculator ran the reflection's expression
    user(retry instruction)  assistant(retry)               <- rewarded

Nothing in r3rl changes for it: the loop, the engine's KV reuse (the tool message is part of the
suffix the retry continues with), the Scorer and the Episode records are the library's.
"""

from __future__ import annotations

import re
from typing import Any

from r3rl.demo.addition import AdditionTask
from r3rl.environment import ReflectRetryEnvironment, Trajectory
from r3rl.tasks.safe_arith import ArithmeticRejected, evaluate, parse_expression

CALC_HINT = " You may check a computation with a calculator: write <calc>expression</calc> (numbers, + - * / and parentheses)."
_CALC = re.compile(r"<calc>(.{0,200}?)</calc>", re.S)


def calculator(text: str) -> str:
    """The tool: the value of the last <calc> expression in `text`, or why there is none (never raises)."""
    found = _CALC.findall(text)
    if not found:
        return "calc: no <calc>expression</calc> in the reflection"
    expr = found[-1].strip()
    try:
        value = evaluate(parse_expression(expr)[0])
    except ArithmeticRejected as e:  # the model's text is untrusted: rejected, with a reason, never eval'd
        return f"calc: cannot compute {expr!r}: {e}"
    return f"calc: {expr} = {value}"


class CalculatorRetryEnvironment(ReflectRetryEnvironment):
    """Reflect -> calculator -> retry: two hooks overridden, nothing else."""

    def reflect_message(self, traj: Trajectory | None, reason: str) -> list[dict[str, Any]]:
        msgs = super().reflect_message(traj, reason)
        return [{**msgs[-1], "content": msgs[-1]["content"] + CALC_HINT}]

    def retry_messages(self, traj: Trajectory) -> list[dict[str, Any]]:
        out = calculator(traj.last.text)  # traj.last: the reflection just generated
        traj.state.setdefault("tool_calls", []).append(out)
        return [{"role": "tool", "content": out}] + super().retry_messages(traj)


class CalculatorAddition(AdditionTask):
    """The demo's addition task with the calculator turn: `Rollout` reads `environment` from the task."""

    name = "calculator_addition"
    environment = CalculatorRetryEnvironment
