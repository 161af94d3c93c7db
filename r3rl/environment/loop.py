"""The fixed loop of a multi-turn rollout, and the hooks an environment fills in.

The loop (`run_environment`), for every trajectory:

    sample a turn of `env.first_stage` after the start context
    until env.is_completed(trajectory):
        step = env.response(trajectory)             # messages to show, the next stage, how many samples
        append step.messages as a context turn      # ids: the chat template's suffix after the last turn
        sample step.samples turns of step.stage     # the first continues the trajectory, the rest are alternatives

The engine stays a generation service: a one-sample step is handed to it as "continue this
sequence with these suffix ids" (`Continuation`), so a KV-cache backend extends the sequence it
holds; a several-sample step waits for one batched call (n = samples) after the current one.
The order of engine calls and continuations is fixed by the loop, not by the environment, so
a seed gives the same tokens whatever hooks compute.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from r3rl.engine.base import Continuation, Engine
from r3rl.environment import prompts
from r3rl.environment.scoring import Scorer
from r3rl.environment.trajectory import Trajectory, Turn
from r3rl.types import Generation, SamplingParams


@dataclass(frozen=True)
class Step:
    """What an environment does after a turn: show `messages` (a user turn, a tool's output, ...), then
    sample `samples` turns of `stage`. next_round: the step opens a new round (Turn.round + 1)."""

    stage: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 1
    next_round: bool = False


class Environment:
    """The hooks of a multi-turn rollout; `run_environment` is the loop that calls them.

    A subclass says which stage comes first (`first_stage`), when a trajectory is done
    (`is_completed`) and what comes next (`response`); `sampling` maps a stage to the engine's
    settings. Verdicts come from `scorer` (`self.scorer.judge(trajectory.example, turn)`), once per turn.
    """

    first_stage: str = "reflection"

    def __init__(self, tokenizer: Any, stop_ids: list[int], scorer: Scorer, params: dict[str, SamplingParams]):
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.scorer = scorer
        self.params = params  # stage -> the engine's settings (seeded per call)

    # ------------------------------------------------------------------ hooks
    def is_completed(self, traj: Trajectory) -> bool:
        """True when `traj` (whose last turn was just generated) ends here."""
        raise NotImplementedError

    def response(self, traj: Trajectory) -> Step:
        """The next step of `traj` (not completed): what the environment shows, and what is sampled next."""
        raise NotImplementedError

    def sampling(self, stage: str) -> SamplingParams:
        """The engine's settings for a turn of `stage`."""
        return self.params[stage]

    # ------------------------------------------------------------------ helpers for the loop
    def suffix_ids(self, traj: Trajectory, messages: list[dict[str, Any]]) -> list[int]:
        """[S] the ids the chat template puts after traj's last (generated) turn: its end of turn, `messages`,
        the next assistant header. Rendered from the conversation; the generated ids themselves are kept."""
        before = Trajectory(traj.key, traj.example, traj.tools, traj.turns[:-1]).conversation()
        return prompts.response_suffix(self.tokenizer, before, messages, traj.tools, traj.last.token_ids, self.stop_ids)


def run_environment(env: Environment, engine: Engine, starts: list[Trajectory], group_size: int) -> list[list[Trajectory]]:
    """Run `env` from each start context: group_size trajectories per start (result[i][j], key (i, j)).

    The first turns of all starts are one engine call (n = group_size). Every one-sample step
    continues inside the call that produced the turn before it; several-sample steps are gathered
    and run, in key order, as one call per (stage, samples) after it."""
    lines = [[_copy(s, (i, j)) for j in range(group_size)] for i, s in enumerate(starts)]
    for row in lines:
        for t in row:
            t.next_stage = env.first_stage
    waiting: list[Trajectory] = []

    def advance(traj: Trajectory, gen: Generation) -> Continuation | None:
        traj.turns.append(Turn.generated(traj.next_stage, gen, traj.next_round))
        if env.is_completed(traj):
            return None
        step = env.response(traj)
        rnd = traj.round + (1 if step.next_round else 0)
        traj.turns.append(Turn.context(env.suffix_ids(traj, step.messages), step.messages, rnd))
        traj.next_stage, traj.next_round, traj.next_samples = step.stage, rnd, step.samples
        if step.samples == 1:
            return Continuation(env.sampling(step.stage), suffix_ids=traj.last.token_ids)
        waiting.append(traj)  # several samples from one prompt: a batched call of their own, after this one
        return None

    # owners[i][j]: the trajectory that sample j of prompt i continues, or None for an alternative sample
    owners: list[list[Trajectory | None]] = [list(row) for row in lines]
    prompt_ids = [s.ids() for s in starts]
    stage, n = env.first_stage, group_size
    while True:
        heads: dict[int, Turn] = {}

        def then(i: int, j: int, depth: int, gen: Generation, owners=owners, heads=heads) -> Continuation | None:
            traj = owners[i][j]
            if traj is None:
                return None  # an alternative: recorded after the call, it ends there
            at = len(traj.turns)
            cont = advance(traj, gen)
            if depth == 0:
                heads[i] = traj.turns[at]  # the turn its alternatives (if any) belong to
            return cont

        results = engine.generate(prompt_ids, env.sampling(stage), n=n, then=then)
        for i, row in enumerate(results):
            for j, gen in enumerate(row):
                if owners[i][j] is None:
                    head = heads[i]
                    head.alternatives.append(Turn.generated(head.role, gen, head.round))
        if not waiting:
            return lines
        waiting.sort(key=lambda t: t.key)
        stage, n = waiting[0].next_stage, waiting[0].next_samples
        batch = [t for t in waiting if (t.next_stage, t.next_samples) == (stage, n)]
        waiting[:] = [t for t in waiting if (t.next_stage, t.next_samples) != (stage, n)]
        owners = [[t] + [None] * (n - 1) for t in batch]
        prompt_ids = [t.ids() for t in batch]


def _copy(start: Trajectory, key: tuple[int, int]) -> Trajectory:
    return Trajectory(key, start.example, start.tools, list(start.turns), copy.deepcopy(start.state))
