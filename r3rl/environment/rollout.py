"""The rollout over whole batches: first attempts, then reflections and retries run by an environment.

Every stage is one batched engine call. Reflections and their retries are run by
`ReflectRetryEnvironment` (r3rl/environment/): a fixed loop over the engine with narrow hooks,
whose records are `Trajectory`s of turns carried token-in, token-out; this module turns them
into `Episode`s. A retry continues from its reflection's state (a suffix continuation inside
the same engine call), so a KV-cache backend never prefills the shared conversation twice.

Ids:
    context_ids    = template([system?] user(task) assistant(attempt) user(reflect))   (ends with the assistant header)
    reflection_ids = generated, end-of-turn token included   <- the only tokens GRPO trains
    retry prompt   = context_ids + reflection_ids + template suffix(user(retry), assistant header)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from r3rl.config import GenerationConfig, RolloutConfig
from r3rl.engine.base import Engine
from r3rl.environment import prompts
from r3rl.environment import ReflectRetryEnvironment, Scorer, Trajectory, run_environment
from r3rl.environment.scoring import VERIFIER_ERROR, VerifierError  # noqa: F401  (re-exported: evaluation, tests)
from r3rl.environment.trajectory import TrainedTurns
from r3rl.errors import InputError
from r3rl.runtime.seeds import derive_seed  # noqa: F401  (re-exported: mining, training and tests import it from here)
from r3rl.tasks.base import Example, Task
from r3rl.types import Episode, Generation, SamplingParams, Verdict


@dataclass
class Attempt:
    """A first attempt at an example, with its verdict."""

    example: Example
    text: str
    verdict: Verdict
    token_ids: list[int]
    prompt_ids: list[int] = field(default_factory=list)  # [P] the templated task prompt the attempt continues
    logprobs: list[float] = field(default_factory=list)  # [T] sampling log-probs of token_ids

    def as_failure(self, example_id: str = "") -> "Failure":
        """This (failed) attempt as the input of reflection."""
        return Failure(self.example, self.text, self.verdict.reason, example_id,
                       attempt_class=self.verdict.failure_class)


@dataclass
class Failure:
    """A failed first attempt: the input of reflection (from mining or drawn online)."""

    example: Example
    attempt_text: str
    attempt_reason: str = ""
    example_id: str = ""
    attempt_class: str = ""  # the verifier's failure class of the attempt ("" = unclassified)


def failed_attempts(row: list[Attempt], limit: int | None = None) -> list[Attempt]:
    """The failed attempts among one example's first attempts, in sampling order, at most `limit`.

    The one rule for "first attempts -> failures" (mining, online training, evaluation)."""
    return [a for a in row if not a.verdict.ok][:limit]


def instructions_from(cfg: RolloutConfig) -> prompts.Instructions:
    return prompts.Instructions(
        reflect=cfg.reflect_instruction or prompts.DEFAULT_REFLECT,
        retry=cfg.retry_instruction or prompts.DEFAULT_RETRY,
        retry_no_reflection=cfg.retry_no_reflection_instruction or prompts.DEFAULT_RETRY_NO_REFLECTION,
        include_reason=cfg.include_reason,
    )


class Rollout:
    """Runs the stages of reflect-retry over batches with one engine and one task.

    The reflect -> retry turns come from `environment` (default `ReflectRetryEnvironment`; a task may
    name its own subclass as `Task.environment`, see examples/tool_retry)."""

    def __init__(self, engine: Engine, task: Task, generation: GenerationConfig, rollout: RolloutConfig,
                 environment: type[ReflectRetryEnvironment] | None = None):
        self.engine = engine
        self.task = task
        self.gen = generation
        self.cfg = rollout
        self.instructions = instructions_from(rollout)
        self.tokenizer = engine.tokenizer
        self.stop_ids = engine.stop_token_ids()
        self.scorer = Scorer(task, rollout.max_verifier_errors)
        self.environment = environment or getattr(task, "environment", None) or ReflectRetryEnvironment

    @property
    def verify_errors(self) -> int:
        """Verifier exceptions so far (scored as failures; `Scorer`)."""
        return self.scorer.errors

    # ---------------------------------------------------------------- sampling settings
    def _params(self, stage: str, seed: int, sampling: GenerationConfig | None = None) -> SamplingParams:
        """A stage's settings from `sampling` (e.g. the evaluation's), else the rollout's generation section."""
        return (sampling or self.gen).sampling(stage, seed=derive_seed(seed, stage))

    def verify(self, example: Example, text: str) -> Verdict:
        """The task's verdict; an exception in the verifier is a failed verdict, counted and logged (`Scorer`)."""
        return self.scorer.verdict(example, text)

    # ---------------------------------------------------------------- stage 1
    def attempts(self, examples: list[Example], n: int, seed: int,
                 sampling: GenerationConfig | None = None) -> list[list[Attempt]]:
        """n first attempts per example, verified; `sampling` replaces the generation section for this call."""
        prompt_ids = [prompts.encode(self.tokenizer, self.task.messages(ex), self.task.tools(ex)) for ex in examples]
        self._check_prompt_lengths(examples, prompt_ids)
        gens = self.engine.generate(prompt_ids, self._params("attempt", seed, sampling), n=n)
        return [
            [Attempt(ex, g.text, self.verify(ex, g.text), g.token_ids, g.prompt_ids, g.logprobs) for g in row]
            for ex, row in zip(examples, gens)
        ]

    def _check_prompt_lengths(self, examples: list[Example], prompt_ids: list[list[int]]) -> None:
        """generation.max_prompt_tokens: a clear stop before a long tool schema exhausts memory."""
        limit = self.gen.max_prompt_tokens
        for ex, ids in zip(examples, prompt_ids):
            if limit and len(ids) > limit:
                raise InputError(
                    f"example {self.task.example_id(ex)} of task {self.task.name!r}: its prompt has {len(ids)} tokens, "
                    f"more than generation.max_prompt_tokens={limit}; raise the limit or leave the example out of the data"
                )

    # ---------------------------------------------------------------- reflections and retries
    def make_environment(self, seed: int, sampling: GenerationConfig | None = None) -> ReflectRetryEnvironment:
        """The environment of one reflect_and_retry call (its stages' settings seeded from `seed`)."""
        params = {stage: self._params(stage, seed, sampling) for stage in ("reflection", "retry")}
        return self.environment(self.tokenizer, self.stop_ids, self.scorer, params, self.instructions,
                                rounds=self.cfg.rounds, retries_per_reflection=self.cfg.retries_per_reflection)

    def _conversation(self, failure: Failure) -> list[dict[str, Any]]:
        """The messages before a failure's first reflection (the TRL integration builds the same)."""
        env = self.make_environment(seed=0)
        return env.start_messages(self.task.messages(failure.example), failure.attempt_text, failure.attempt_reason)

    def trajectories(self, failures: list[Failure], group_size: int, seed: int,
                     sampling: GenerationConfig | None = None) -> tuple[ReflectRetryEnvironment, list[list[Trajectory]]]:
        """group_size trajectories per failure (result[i][j]), each from the failure's reflect context."""
        env = self.make_environment(seed, sampling)
        starts = [env.start(i, f.example, self.task.messages(f.example), f.attempt_text, f.attempt_reason,
                            self.task.tools(f.example)) for i, f in enumerate(failures)]
        return env, run_environment(env, self.engine, starts, group_size)

    def reflect_and_retry(self, failures: list[Failure], group_size: int, seed: int,
                          sampling: GenerationConfig | None = None) -> list[Episode]:
        """G reflections per failure, each followed by its retry(s): group_size x len(failures) episodes
        (more with several rounds). Episodes come grouped: all members of a group are adjacent.
        `sampling` replaces the generation section for this call (the rollout itself is never changed)."""
        env, lines = self.trajectories(failures, group_size, seed, sampling)
        attempt_prompts = [prompts.encode(self.tokenizer, self.task.messages(f.example), self.task.tools(f.example))
                           for f in failures]
        episodes: list[Episode] = []
        for i, failure in enumerate(failures):
            ex_id = failure.example_id or self.task.example_id(failure.example)
            for traj in lines[i]:
                episodes += episodes_of(env, traj, failure, ex_id, f"{ex_id}:{seed}:{i}", attempt_prompts[i])
        # Multi-round episodes are regrouped by (failure, round) so each group shares one round.
        episodes.sort(key=lambda e: (e.round, e.group_id))
        return episodes

    # ---------------------------------------------------------------- the evaluation control
    def retry_without_reflection(self, failures: list[Failure], seed: int,
                                 sampling: GenerationConfig | None = None) -> list[Generation]:
        """The control: a second try after only being told it failed (no reflection); `sampling` as in attempts()."""
        convs = [
            self.task.messages(f.example)
            + [{"role": "assistant", "content": f.attempt_text}, {"role": "user", "content": self.instructions.retry_no_reflection}]
            for f in failures
        ]
        ids = [prompts.encode(self.tokenizer, c, self.task.tools(f.example)) for c, f in zip(convs, failures)]
        return [row[0] for row in self.engine.generate(ids, self._params("retry", derive_seed(seed, "control"), sampling), n=1)]



def episodes_of(env: ReflectRetryEnvironment, traj: Trajectory, failure: Failure, example_id: str, group: str,
                attempt_prompt_ids: list[int]) -> list[Episode]:
    """The Episode view of one trajectory: one episode per round (its reflection, its retries, their mean pass)."""
    out = []
    for k, refl, retries in env.rounds_of(traj):
        verdicts = [env.scorer.judge(traj.example, r) for r in retries]
        first = retries[0] if retries else None
        out.append(Episode(
            example_id=example_id,
            group_id=f"{group}:r{refl.round}",
            context_ids=traj.ids(k),
            attempt_text=failure.attempt_text,
            attempt_ok=False,
            attempt_reason=failure.attempt_reason,
            reflection_ids=refl.token_ids,
            reflection_text=refl.text,
            reflection_logprobs=refl.logprobs,
            retry_text=first.text if first else "",
            retry_ok=bool(verdicts and verdicts[0].ok),
            retry_reason=verdicts[0].reason if verdicts else "no retry generated",
            retry_ids=first.token_ids if first else [],
            reward=sum(v.ok for v in verdicts) / len(verdicts) if verdicts else 0.0,
            attempt_prompt_ids=attempt_prompt_ids,
            retry_prompt_ids=traj.prompt_ids(first) if first else [],
            retry_logprobs=first.logprobs if first else [],
            round=refl.round,
            failure_index=traj.key[0],
            retry_class=(verdicts[0].failure_class or None) if verdicts else None,  # for evaluation's classes
            extra={"retries": len(verdicts), "reflection_finish": refl.finish_reason},
            turns=TrainedTurns(traj, {"reflection": refl} | ({"retry": first} if first else {})),
        ))
    return out
