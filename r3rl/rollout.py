"""The rollout state machine: attempt -> verify -> reflect -> retry -> verify, over whole batches.

Every stage is one batched engine call. Reflections and their retries are a single
call too: the retry continues from each reflection's state (`Engine.generate(...,
then=...)`), so a KV-cache backend never prefills the shared conversation twice.

Ids and text:
    context_ids    = template([system?] user(task) assistant(attempt) user(reflect))   (ends with the assistant header)
    reflection_ids = generated, end-of-turn token included   <- the only tokens GRPO trains
    retry prompt   = context_ids + reflection_ids + template suffix(user(retry), assistant header)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from r3rl import prompts
from r3rl.config import GenerationConfig, RolloutConfig
from r3rl.engine.base import Continuation, Engine
from r3rl.errors import InputError, R3RLError
from r3rl.seeds import derive_seed  # noqa: F401  (re-exported: mining, training and tests import it from here)
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


# The failure class of a verdict the verifier could not give (it raised): outside every task's vocabulary,
# so a broken verifier shows as its own row of the per-class tables, never as a weak model's failure.
VERIFIER_ERROR = "verifier_error"


class VerifierError(R3RLError, RuntimeError):
    """Too many verifier exceptions: the task's verify() is broken, so the run stops."""


class Rollout:
    """Runs the stages of reflect-retry over batches with one engine and one task."""

    def __init__(self, engine: Engine, task: Task, generation: GenerationConfig, rollout: RolloutConfig):
        self.engine = engine
        self.task = task
        self.gen = generation
        self.cfg = rollout
        self.instructions = instructions_from(rollout)
        self.tokenizer = engine.tokenizer
        self.stop_ids = engine.stop_token_ids()
        self.verify_errors = 0  # verifier exceptions: scored as failures, counted, logged, bounded

    # ---------------------------------------------------------------- sampling settings
    def _params(self, stage: str, seed: int, sampling: GenerationConfig | None = None) -> SamplingParams:
        """A stage's settings from `sampling` (e.g. the evaluation's), else the rollout's generation section."""
        g = sampling or self.gen
        limits = {"attempt": g.max_attempt_tokens, "reflection": g.max_reflection_tokens, "retry": g.max_retry_tokens}
        temps = {"attempt": g.attempt_temperature, "reflection": g.reflection_temperature, "retry": g.retry_temperature}
        return SamplingParams(
            max_new_tokens=limits[stage], temperature=temps[stage], top_p=g.top_p, top_k=g.top_k,
            seed=derive_seed(seed, stage),
        )

    def verify(self, example: Example, text: str) -> Verdict:
        """The task's verdict; an exception in the verifier is a failed verdict, counted and logged.

        A verifier that raises is a bug in the task, not a weak model: each one is reported with the
        example id, and past `rollout.max_verifier_errors` the run stops instead of training on it.
        """
        name = type(self.task).__name__
        try:
            verdict = self.task.verify(example, text)
            if not isinstance(verdict, Verdict):
                raise TypeError(f"returned {type(verdict).__name__}, not Verdict")
        except Exception as e:  # noqa: BLE001 - any verifier bug is counted the same way
            self.verify_errors += 1
            example_id = self.task.example_id(example)
            print(f"r3rl: {name}.verify raised on example {example_id}: {type(e).__name__}: {e} "
                  f"(verifier error {self.verify_errors}; scored as a failure)", file=sys.stderr, flush=True)
            if self.verify_errors > self.cfg.max_verifier_errors:
                raise VerifierError(
                    f"{name}.verify raised {self.verify_errors} times (more than rollout.max_verifier_errors="
                    f"{self.cfg.max_verifier_errors}); the last, on example {example_id}: {type(e).__name__}: {e}. "
                    "Fix the verifier, or raise the limit to keep going."
                ) from None
            return Verdict(False, f"verifier error: {type(e).__name__}", VERIFIER_ERROR)
        return verdict

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

    # ---------------------------------------------------------------- conversations
    def _conversation(self, failure: Failure) -> list[dict[str, Any]]:
        return self.task.messages(failure.example) + [
            {"role": "assistant", "content": failure.attempt_text},
            {"role": "user", "content": self.instructions.reflect_text(failure.attempt_reason)},
        ]

    def reflect_and_retry(self, failures: list[Failure], group_size: int, seed: int,
                          sampling: GenerationConfig | None = None) -> list[Episode]:
        """G reflections per failure, each followed by its retry(s): group_size x len(failures) episodes
        (more with several rounds). Episodes come grouped: all members of a group are adjacent.
        `sampling` replaces the generation section for this call (the rollout itself is never changed)."""
        tools = [self.task.tools(f.example) for f in failures]
        convs = [self._conversation(f) for f in failures]
        contexts = [prompts.encode(self.tokenizer, c, t) for c, t in zip(convs, tools)]
        attempt_prompts = [prompts.encode(self.tokenizer, self.task.messages(f.example), t) for f, t in zip(failures, tools)]
        k = self.cfg.retries_per_reflection
        retry_params = self._params("retry", seed, sampling)
        reflect_params = self._params("reflection", seed, sampling)

        def retry_suffix(i: int, conv: list[dict[str, Any]], gen: Generation) -> list[int]:
            return prompts.continuation_suffix(
                self.tokenizer, conv, self.instructions.retry, tools[i], gen.token_ids, self.stop_ids
            )

        # Multi-round chains need the conversation so far: (i, j) -> messages before the next assistant turn.
        chains: dict[tuple[int, int], list[dict[str, Any]]] = {}
        # An intermediate retry is verified in `then` to decide on another round; its verdict is kept
        # (by the Generation's identity) so the episodes below reuse it instead of verifying it again.
        checked: dict[int, Verdict] = {}

        def then(i: int, j: int, depth: int, gen: Generation) -> Continuation | None:
            conv = chains.setdefault((i, j), list(convs[i]))
            if depth % 2 == 0:  # a reflection just finished: retry (k == 1 continues in the engine)
                if k != 1:
                    return None
                suffix = retry_suffix(i, conv, gen)
                conv += [{"role": "assistant", "content": gen.text}, {"role": "user", "content": self.instructions.retry}]
                return Continuation(retry_params, suffix_ids=suffix)
            # a retry just finished: reflect again if it failed and rounds remain
            if depth // 2 + 1 >= self.cfg.rounds:
                return None
            verdict = checked[id(gen)] = self.verify(failures[i].example, gen.text)
            if verdict.ok:
                return None
            reflect = self.instructions.reflect_text(verdict.reason)
            suffix = prompts.continuation_suffix(self.tokenizer, conv, reflect, tools[i], gen.token_ids, self.stop_ids)
            conv += [{"role": "assistant", "content": gen.text}, {"role": "user", "content": reflect}]
            return Continuation(reflect_params, suffix_ids=suffix)

        results = self.engine.generate(contexts, reflect_params, n=group_size, then=then)

        extra_retries: dict[tuple[int, int], list[Generation]] = {}
        if k != 1:  # several retries per reflection: one more batched call, n=k per reflection
            keys = [(i, j) for i in range(len(failures)) for j in range(group_size)]
            retry_prompts = [
                results[i][j].prompt_ids + results[i][j].token_ids + retry_suffix(i, convs[i], results[i][j])
                for i, j in keys
            ]
            outs = self.engine.generate(retry_prompts, retry_params, n=k)
            extra_retries = dict(zip(keys, outs))

        episodes: list[Episode] = []
        for i, failure in enumerate(failures):
            ex_id = failure.example_id or self.task.example_id(failure.example)
            for j in range(group_size):
                refl = results[i][j]
                rnd = 1
                while refl is not None:
                    retries = extra_retries.get((i, j)) if rnd == 1 and k != 1 else [refl.next] if refl.next else []
                    verdicts = [checked.pop(id(r), None) or self.verify(failure.example, r.text) for r in retries]
                    reward = sum(v.ok for v in verdicts) / len(verdicts) if verdicts else 0.0
                    first = retries[0] if retries else None
                    extra = {"retries": len(verdicts), "reflection_finish": refl.finish_reason, "failure_index": i}
                    if verdicts and verdicts[0].failure_class:  # the retry's failure class, for evaluation
                        extra["retry_class"] = verdicts[0].failure_class
                    episodes.append(Episode(
                        example_id=ex_id,
                        group_id=f"{ex_id}:{seed}:{i}:r{rnd}",
                        context_ids=refl.prompt_ids,
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
                        reward=reward,
                        attempt_prompt_ids=attempt_prompts[i],
                        retry_prompt_ids=first.prompt_ids if first else [],
                        retry_logprobs=first.logprobs if first else [],
                        round=rnd,
                        extra=extra,
                    ))
                    refl = first.next if first is not None else None
                    rnd += 1
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

