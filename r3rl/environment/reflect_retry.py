"""r3rl's turn structure: reflect on a failed attempt, retry, and (rounds > 1) reflect on a failed retry.

    start:  [system?] user(task) assistant(failed attempt) user(reflect instruction)  -> assistant header
    round r: reflection (1 sample per trajectory; G trajectories per failure)
             user(retry instruction), retries (rollout.retries_per_reflection samples; the first continues)
             if the first retry failed and rounds remain: user(reflect instruction) -> round r + 1

Each of these choices is a hook a subclass may override: `reflect_message` (what the model is
told about a failure; `prompts.include_reason` shows the verifier's reason), `retry_messages`
(what comes between a reflection and its retry: examples/tool_retry shows a tool's output there)
and `max_rounds` (`rollout.rounds`).
"""

from __future__ import annotations

from typing import Any

from r3rl.environment import prompts
from r3rl.environment.loop import Environment, Step
from r3rl.environment.scoring import Scorer
from r3rl.environment.trajectory import Trajectory, Turn
from r3rl.types import SamplingParams, Verdict

REFLECTION, RETRY = "reflection", "retry"


class ReflectRetryEnvironment(Environment):
    first_stage = REFLECTION

    def __init__(self, tokenizer: Any, stop_ids: list[int], scorer: Scorer, params: dict[str, SamplingParams],
                 instructions: prompts.Instructions, rounds: int = 1, retries_per_reflection: int = 1):
        super().__init__(tokenizer, stop_ids, scorer, params)
        self.instructions = instructions
        self.rounds = rounds
        self.retries_per_reflection = retries_per_reflection

    # ------------------------------------------------------------------ hooks of this turn structure
    def reflect_message(self, traj: Trajectory | None, reason: str) -> list[dict[str, Any]]:
        """What follows a failed answer (the failed attempt, or a failed retry): the reflect instruction,
        with the verifier's `reason` where the instructions include it (prompts.include_reason)."""
        return [{"role": "user", "content": self.instructions.reflect_text(reason)}]

    def retry_messages(self, traj: Trajectory) -> list[dict[str, Any]]:
        """What comes between a reflection (traj's last turn) and its retries."""
        return [{"role": "user", "content": self.instructions.retry}]

    def max_rounds(self, traj: Trajectory) -> int:
        """How many reflect -> retry rounds `traj` may take (rollout.rounds)."""
        return self.rounds

    # ------------------------------------------------------------------ the start context
    def start(self, key: int, example: Any, messages: list[dict[str, Any]], attempt_text: str, attempt_reason: str,
              tools: list | None) -> Trajectory:
        """The trajectory before the first reflection: the task, the failed attempt, the reflect instruction."""
        conv = self.start_messages(messages, attempt_text, attempt_reason)
        return Trajectory((key, 0), example, tools, [Turn.context(prompts.encode(self.tokenizer, conv, tools), conv)])

    def start_messages(self, messages: list[dict[str, Any]], attempt_text: str, attempt_reason: str) -> list[dict[str, Any]]:
        """The chat messages of the start context: the task's `messages`, the failed attempt, the reflect message."""
        return list(messages) + [{"role": "assistant", "content": attempt_text}] + self.reflect_message(None, attempt_reason)

    # ------------------------------------------------------------------ the loop's hooks
    def is_completed(self, traj: Trajectory) -> bool:
        if traj.last.role != RETRY:
            return False  # a reflection is always followed by its retry
        if traj.round >= self.max_rounds(traj):
            return True  # checked first: the last round's retry is judged with the records, not here
        return self.scorer.judge(traj.example, traj.last).ok

    def response(self, traj: Trajectory) -> Step:
        if traj.last.role == REFLECTION:
            return Step(RETRY, self.retry_messages(traj), samples=self.retries_per_reflection)
        verdict: Verdict = traj.last.verdict  # judged in is_completed
        return Step(REFLECTION, self.reflect_message(traj, verdict.reason), next_round=True)

    # ------------------------------------------------------------------ reading a finished trajectory
    def rounds_of(self, traj: Trajectory) -> list[tuple[int, Turn, list[Turn]]]:
        """(index of the reflection turn, the reflection, its retries: the continuing one first) per round."""
        out = []
        for k, turn in enumerate(traj.turns):
            if turn.role != REFLECTION:
                continue
            nxt = next((t for t in traj.turns[k + 1:] if t.is_generated), None)
            retries = [nxt] + nxt.alternatives if nxt is not None and nxt.role == RETRY else []
            out.append((k, turn, retries))
        return out
