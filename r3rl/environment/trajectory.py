"""The record of a multi-turn rollout: a `Trajectory` of `Turn`s, token ids in, token ids out.

Every token the model saw is kept as the ids it saw: a context turn holds the ids the chat
template gave (the task prompt, then each environment response rendered as a suffix after the
previous turn), a generated turn holds the engine's sampled ids. A turn's prompt is the
concatenation of the turns before it, so nothing is decoded and re-encoded between turns
(re-tokenizing a turn's text can give other ids than the model sampled: TRL issue #5224).
The text of a generated turn is kept only for the verifier and for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from r3rl.types import Generation, Verdict

CONTEXT = "context"  # the role of a turn the environment wrote (templated prompt or response), never sampled


@dataclass
class Turn:
    """One turn of a trajectory.

    role: CONTEXT for ids the environment wrote, else the generation stage that sampled it
    ("reflection", "retry", or a custom environment's stage name).
    """

    role: str
    token_ids: list[int]  # [T]
    logprobs: list[float] = field(default_factory=list)  # [T] the engine's sampling log-probs (generated turns; see Generation)
    loss_mask: list[int] = field(default_factory=list)  # [T] 1 where a token was sampled (trainable), 0 where it was written
    verdict: Verdict | None = None  # the scorer's verdict, for a scored turn once judged
    text: str = ""  # a generated turn's text (what the verifier reads); a context turn's: ""
    finish_reason: str = ""  # a generated turn's: "stop" or "length"
    messages: list[dict[str, Any]] = field(default_factory=list)  # a context turn's chat messages (what its ids render)
    round: int = 1  # which round of the environment the turn belongs to (1 = first)
    alternatives: list["Turn"] = field(default_factory=list)  # other samples from the same prompt (n > 1); they end there

    @classmethod
    def context(cls, token_ids: list[int], messages: list[dict[str, Any]], round: int = 1) -> "Turn":
        return cls(CONTEXT, list(token_ids), loss_mask=[0] * len(token_ids), messages=list(messages), round=round)

    @classmethod
    def generated(cls, role: str, gen: Generation, round: int = 1) -> "Turn":
        return cls(role, gen.token_ids, gen.logprobs, [1] * len(gen.token_ids), text=gen.text,
                   finish_reason=gen.finish_reason, round=round)

    @property
    def is_generated(self) -> bool:
        return self.role != CONTEXT


@dataclass
class Trajectory:
    """One sampled line of turns from one start (a failure): turns[0] is the templated start context.

    `key` orders trajectories: (start index, sample index); `example` is the task example the
    verifier judges against, `tools` its tool schemas (templating)."""

    key: tuple[int, int]
    example: Any
    tools: list | None
    turns: list[Turn] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # a custom environment's own state (tool results, counters)
    # what the trajectory waits for (set by the loop): the next turn's stage, round, and samples drawn
    next_stage: str = ""
    next_round: int = 1
    next_samples: int = 1

    def ids(self, upto: int | None = None) -> list[int]:
        """[P] the ids of turns[:upto] (all turns by default): the prompt of turn `upto`."""
        return [t for turn in self.turns[:upto] for t in turn.token_ids]

    def prompt_ids(self, turn: Turn) -> list[int]:
        """[P] the ids the model had seen when it sampled `turn` (a turn of this trajectory or an alternative of one)."""
        for k, t in enumerate(self.turns):
            if t is turn or any(a is turn for a in t.alternatives):
                return self.ids(k)
        raise ValueError("the turn is not part of this trajectory")

    def loss_mask(self) -> list[int]:
        """[L] 1 at every sampled token of the main line, 0 at written ones (aligned with ids())."""
        return [m for turn in self.turns for m in turn.loss_mask]

    def generated(self, role: str | None = None) -> list[Turn]:
        """The generated turns of the main line (of one role if given), in order."""
        return [t for t in self.turns if t.is_generated and (role is None or t.role == role)]

    @property
    def last(self) -> Turn:
        return self.turns[-1]

    @property
    def round(self) -> int:
        return self.turns[-1].round if self.turns else 1

    def conversation(self) -> list[dict[str, Any]]:
        """The chat messages so far (context turns' messages, generated turns as assistant messages):
        what the chat template renders the next response after. Used only to render suffixes."""
        out: list[dict[str, Any]] = []
        for t in self.turns:
            out += t.messages if not t.is_generated else [{"role": "assistant", "content": t.text}]
        return out


@dataclass(frozen=True)
class TrainedTurns:
    """What an `Episode` views of its rollout, for the objectives (training/objectives.py): the trajectory
    and the generated turns of the episode's round by role ("reflection", the continuing "retry", or
    "attempt" for objective first_attempt). A turn's context is the trajectory before it, its ids and
    log-probs are the engine's: nothing is rebuilt from the Episode's flat copies."""

    trajectory: Trajectory
    by_role: dict[str, Turn]

    def turn(self, role: str) -> Turn | None:
        return self.by_role.get(role)

    def context(self, turn: Turn) -> list[int]:
        """[P] the ids the model had seen when it sampled `turn`."""
        return self.trajectory.prompt_ids(turn)
