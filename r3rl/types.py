"""Records that cross module boundaries: verdicts, sampling settings, generations, episodes.

One `Episode` carries a rollout from generation to learning (docs/design.md). The reward
and the advantage are separate fields: the advantage is computed from rewards of a
group and never overwrites them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """A verifier's answer: pass/fail, a human-readable reason (never shown to the model by default),
    and for a failure its class: a short stable name from the task's documented vocabulary
    (`Task.failure_classes`); "" = unclassified (a user task that does not classify)."""

    ok: bool
    reason: str = ""
    failure_class: str = ""


@dataclass(frozen=True)
class SamplingParams:
    """Settings for one generation call. temperature == 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


@dataclass
class Generation:
    """One sampled continuation of a prompt.

    token_ids include the stop token (end of turn / EOS) when one was produced.
    logprobs[i] is the sampling log-prob of token_ids[i]: log_softmax(logits) at temperature 1,
    before top-k / top-p. What they are and where training uses them (never as GRPO's old
    log-probs; only the logged mismatch and train.sampling_correction=tis): docs/design.md,
    "The log-prob contract".
    """

    prompt_ids: list[int]  # [P] the full prompt this continuation was generated from
    token_ids: list[int]  # [T]
    text: str  # decoded token_ids without the turn's control tokens (stop, pad, BOS); see Engine.decode_generated
    logprobs: list[float]  # [T]
    finish_reason: str = "stop"  # "stop" (stop token) or "length" (hit max_new_tokens)
    next: "Generation | None" = None  # the continuation generated after this one (multi-turn)


@dataclass
class Episode:
    """One reflection and its retry, for one failed first attempt (one member of a GRPO group).

    The flat view of one round of a `Trajectory` (r3rl/environment/trajectory.py: the turns as
    token ids, built by `r3rl.environment.rollout.episodes_of`) that training, mining, episodes.jsonl and
    reporting read.

    With train.objective=first_attempt an episode is one fresh first attempt instead: its
    attempt_* ids are set, and context_ids, the reflection and the retry are empty.
    """

    example_id: str
    group_id: str
    context_ids: list[int]  # [P] task + failed attempt + reflect instruction, templated
    attempt_text: str
    attempt_ok: bool
    reflection_ids: list[int]  # [T] generated tokens, end-of-turn token included
    reflection_text: str
    reflection_logprobs: list[float]  # [T] sampling log-probs of reflection_ids (Generation.logprobs; docs/design.md, "The log-prob contract")
    retry_text: str
    retry_ok: bool
    reward: float
    advantage: float = 0.0
    attempt_reason: str = ""
    retry_reason: str = ""
    retry_ids: list[int] = field(default_factory=list)
    round: int = 1  # which reflect/retry round produced this reflection (1 = first)
    attempt_prompt_ids: list[int] = field(default_factory=list)  # [P0] task only, templated (ends with the assistant header): the first attempt's prompt
    attempt_ids: list[int] = field(default_factory=list)  # [A] a first attempt sampled in training (objective first_attempt); empty otherwise
    attempt_logprobs: list[float] = field(default_factory=list)  # [A] sampling log-probs of attempt_ids
    retry_prompt_ids: list[int] = field(default_factory=list)  # [P1] context_ids + reflection_ids + retry suffix: the retry's prompt (empty: no retry)
    retry_logprobs: list[float] = field(default_factory=list)  # [R] sampling log-probs of retry_ids
    failure_index: int | None = None  # the index of the failure this episode answers in its rollout call's list
    attempt_class: str | None = None  # objective first_attempt: the sampled attempt's failure class ("" = unclassified)
    retry_class: str | None = None  # the first retry's failure class, when it failed and the verifier classified it
    extra: dict[str, Any] = field(default_factory=dict)  # retries per reflection, the reflection's finish reason
    # the rollout's turns this episode is the flat view of (r3rl.environment.trajectory.TrainedTurns), which the
    # objectives read; None for an episode built from its fields alone. Not written to episodes.jsonl.
    turns: "TrainedTurns | None" = field(default=None, repr=False, compare=False)

    def to_json(self, with_ids: bool = False) -> dict[str, Any]:
        """The episodes.jsonl row; failure_index, attempt_class and retry_class (when set) go under "extra",
        where r3rl has always written them."""
        skip = {"turns"} | (set() if with_ids else _IDS)
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in skip}
        typed = {k: d.pop(k) for k in _UNDER_EXTRA}
        d["extra"] = d["extra"] | {k: v for k, v in typed.items() if v is not None}
        return d


_IDS = {"context_ids", "reflection_ids", "reflection_logprobs", "retry_ids", "attempt_prompt_ids", "attempt_ids",
        "attempt_logprobs", "retry_prompt_ids", "retry_logprobs"}  # written only with_ids
_UNDER_EXTRA = ("failure_index", "attempt_class", "retry_class")  # typed fields written under "extra", in this order
