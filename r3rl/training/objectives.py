"""Training objectives (`train.objective`): which sampled tokens the loss trains, in which context, for which reward.

Every objective has the same budget: `train.steps` optimizer steps, each over `train.batch_size`
failures of the same failure stream (training/failures.py), with `rollout.group_size` (G) samples
per failure; the loss is the trainer's one clipped GRPO surrogate (grpo.policy_loss), normalised
by the same constant (batch_size x G), so the objectives differ only in the rows they hand it.

* `reflection` (the default, the paper): the G reflections of a failure, each followed by its
  retry. Context = task + failed attempt + reflect instruction (`Episode.context_ids`),
  completion = the reflection's tokens, reward = the retry passes (the mean over retries with
  rollout.retries_per_reflection > 1). Advantages are normalised within the G reflections.
* `first_attempt` (plain GRPO from the verifier, the baseline a reviewer asks for first): for the
  same failure-set examples, G fresh first attempts each (one `Rollout.attempts(..., n=G)` call).
  Context = the first-attempt prompt (`Episode.attempt_prompt_ids`), completion = the attempt's
  tokens, reward = its verdict; advantages within the G attempts of an example. No reflection
  or retry is generated.
* `retry`: the same rollouts as `reflection`, but the retry's tokens are trained with the
  reflection in context. Context = the retry's prompt (context + reflection + retry instruction,
  `Episode.retry_prompt_ids`), completion = the (first) retry's tokens, reward = that retry
  passes; the group is the G retries of one failure.
* `distill_retry` (as in R3L / ERL): the same rollouts; each successful retry is trained with the
  failed attempt and the reflection taken out of the context, so the first attempt learns the
  fix directly. Context = the first-attempt prompt, completion = the successful retry's tokens,
  advantage 1; a failed retry contributes no row (a group without a success contributes
  nothing). This is supervised distillation through the same loss: at the first update the PPO
  ratio is 1, so the gradient is that of the log-likelihood of the successful retries (scaled by
  1 / (batch_size x G) per sequence mean).

Log-probs (training, old and reference; docs/design.md, "The log-prob contract") are taken at the
temperature the trained completion was sampled at (`stage`): generation.reflection_temperature for reflections, attempt_temperature for
first attempts, retry_temperature for retries (0 = greedy counts as 1); with
train.loss_aggregation=token_sum the constant uses that stage's token limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from r3rl.config import Objective  # the variants, defined once with train.objective
from r3rl.environment.trajectory import Trajectory, TrainedTurns, Turn
from r3rl.training import grpo
from r3rl.types import Episode

if TYPE_CHECKING:
    from r3rl.config import GenerationConfig
    from r3rl.environment.rollout import Failure, Rollout


@dataclass(frozen=True)
class Row:
    """One candidate row of the loss: `completion` trained after `context`, for episode `episode`."""

    episode: int  # index of the episode in its micro-batch
    context: list[int]  # [P]
    completion: list[int]  # [C]
    sampling_logprobs: list[float]  # [C] the engine's sampling log-probs of the completion (docs/design.md)


class TrainingObjective:
    """The default behaviour, GRPO over groups of episodes; subclasses say which tokens and reward."""

    objective: Objective
    stage = "reflection"  # the generation stage that sampled the trained completions

    def episodes(self, rollout: "Rollout", failures: list["Failure"], group_size: int, seed: int) -> list[Episode]:
        """One micro-batch's rollouts: group_size episodes per failure, members of a group adjacent."""
        return rollout.reflect_and_retry(failures, group_size, seed=seed)

    def reward(self, e: Episode) -> float:
        return e.reward

    def row(self, i: int, e: Episode) -> Row | None:
        raise NotImplementedError

    def turn_row(self, i: int, e: Episode, role: str, context: list[int] | None = None) -> Row | None:
        """The row that trains episode i's generated turn `role` ("reflection", "retry", "attempt"), read from
        the rollout's turns (`Episode.turns`): the turn's sampled ids and log-probs after what the model saw
        before it, or after `context` when given; None when the episode has no such turn. An episode built
        from its fields alone (no turns) is read from the same-named flat fields."""
        if e.turns is None:
            ctx_field, ids_field = _FLAT[role]
            return Row(i, getattr(e, ctx_field) if context is None else context, getattr(e, ids_field),
                       getattr(e, f"{role}_logprobs"))
        turn = e.turns.turn(role)
        if turn is None:
            return None
        return Row(i, e.turns.context(turn) if context is None else context, turn.token_ids, turn.logprobs)

    def rows(self, episodes: list[Episode]) -> list[Row]:
        """The rows that may enter the loss, in episode order (a GRPO objective: one per episode)."""
        return [r for i, e in enumerate(episodes) if (r := self.row(i, e)) is not None]

    def advantages(self, rewards: Tensor, group_ids: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        """([R] advantages, [R] bool: no policy signal) of the rows: normalised within each group."""
        return grpo.group_advantages(rewards, group_ids, mode), grpo.zero_signal_mask(rewards, group_ids)

    def temperature(self, gen: "GenerationConfig") -> float:
        """The sampling temperature of the trained completions (0 = greedy counts as 1)."""
        return gen.sampling(self.stage).temperature or 1.0

    def max_tokens(self, gen: "GenerationConfig") -> int:
        """The token limit of the trained completions (the token_sum constant)."""
        return gen.sampling(self.stage).max_new_tokens


class ReflectionObjective(TrainingObjective):
    objective = Objective.REFLECTION
    stage = "reflection"

    def row(self, i: int, e: Episode) -> Row | None:
        return self.turn_row(i, e, "reflection")


class FirstAttemptObjective(TrainingObjective):
    objective = Objective.FIRST_ATTEMPT
    stage = "attempt"

    def episodes(self, rollout: "Rollout", failures: list["Failure"], group_size: int, seed: int) -> list[Episode]:
        """G first attempts at each failure's example; an episode holds one attempt (no reflection, no retry)."""
        rows = rollout.attempts([f.example for f in failures], n=group_size, seed=seed)
        out = []
        for i, (f, attempts) in enumerate(zip(failures, rows)):
            ex_id = f.example_id or rollout.task.example_id(f.example)
            for j, a in enumerate(attempts):
                turn = Turn("attempt", a.token_ids, a.logprobs, [1] * len(a.token_ids), verdict=a.verdict, text=a.text)
                line = Trajectory((i, j), f.example, None, [Turn.context(a.prompt_ids, []), turn])
                out.append(Episode(
                    example_id=ex_id, group_id=f"{ex_id}:{seed}:{i}:a", context_ids=[], attempt_text=a.text,
                    attempt_ok=a.verdict.ok, reflection_ids=[], reflection_text="", reflection_logprobs=[],
                    retry_text="", retry_ok=False, reward=float(a.verdict.ok), attempt_reason=a.verdict.reason,
                    retry_reason="no retry (objective first_attempt)", attempt_prompt_ids=a.prompt_ids,
                    attempt_ids=a.token_ids, attempt_logprobs=a.logprobs,
                    failure_index=i, attempt_class=a.verdict.failure_class, turns=TrainedTurns(line, {"attempt": turn}),
                ))
        return out

    def row(self, i: int, e: Episode) -> Row | None:
        return self.turn_row(i, e, "attempt")


class RetryObjective(TrainingObjective):
    objective = Objective.RETRY
    stage = "retry"

    def reward(self, e: Episode) -> float:
        return float(e.retry_ok)  # the verdict of the retry whose tokens are trained

    def row(self, i: int, e: Episode) -> Row | None:
        return _nonempty(self.turn_row(i, e, "retry"))  # an episode without a retry trains nothing


class DistillRetryObjective(TrainingObjective):
    objective = Objective.DISTILL_RETRY
    stage = "retry"

    def reward(self, e: Episode) -> float:
        return float(e.retry_ok)

    def row(self, i: int, e: Episode) -> Row | None:
        # the first-attempt prompt in place of the retry's: the failed attempt and the reflection are taken out
        return _nonempty(self.turn_row(i, e, "retry", context=e.attempt_prompt_ids)) if e.retry_ok else None

    def advantages(self, rewards: Tensor, group_ids: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        """Advantage 1 for every row (each one a successful retry): no group normalisation."""
        return torch.ones_like(rewards), torch.zeros(rewards.shape, dtype=torch.bool)


def _nonempty(row: Row | None) -> Row | None:
    return row if row is not None and row.completion else None


# role -> (context field, ids field) of an Episode's flat view; the log-probs are "<role>_logprobs"
_FLAT = {"reflection": ("context_ids", "reflection_ids"), "retry": ("retry_prompt_ids", "retry_ids"),
         "attempt": ("attempt_prompt_ids", "attempt_ids")}

OBJECTIVES: dict[Objective, type[TrainingObjective]] = {
    cls.objective: cls for cls in (ReflectionObjective, FirstAttemptObjective, RetryObjective, DistillRetryObjective)
}


def build_objective(name: str | Objective) -> TrainingObjective:
    """The objective `train.objective` names."""
    return OBJECTIVES[Objective(name)]()
