"""Train reflections the r3rl way inside TRL's `GRPOTrainer`: what a TRL user adds to a GRPO script.

    from r3rl.integrations.trl import ReflectionRollout, reflection_dataset, retry_reward
    from r3rl.tasks import load_task

    task = load_task("countdown")
    dataset = reflection_dataset("failures.jsonl", task)      # a failure set from `r3rl mine`
    trainer = GRPOTrainer(
        model=model, args=GRPOConfig(...), train_dataset=dataset,
        rollout_func=ReflectionRollout(dataset),              # reflection = completion; retry generated too
        reward_funcs=retry_reward(task),                      # reward = the task's verdict on the retry
    )

The three pieces and why they look like this:

- `reflection_dataset` turns r3rl failures into TRL's conversational prompt dataset. A prompt is
  `task messages + assistant(failed attempt) + user(reflect instruction)`, the conversation r3rl's
  own `Rollout` builds, and it is templated with `r3rl.environment.prompts.encode`, so TRL trains on exactly the
  context ids r3rl would. Columns besides `prompt` (`example`, `example_id`, `tools`) reach the reward.
- `ReflectionRollout` is TRL's `rollout_func(prompts, trainer)`. It samples one reflection per row
  (TRL's sampler already repeats each prompt `num_generations` times) and then the retry after each
  reflection, both through `trainer._generate_single_turn`: the trainer's own generation path, the
  one TRL's multi-turn tool loop also calls. So vLLM (server or colocate), transformers' paged
  generation, DeepSpeed ZeRO-3 parameter gathering and the `GRPOConfig` sampling settings
  (temperature, top-p, `max_completion_length`) apply to reflections and retries alike, with no second
  model copy. That method is private, hence the tight TRL pin (pyproject `trl` extra); a TRL without
  it fails with one sentence. The reflection is returned as the completion, so TRL's completion mask,
  and with it the loss, covers the reflection tokens only (docs/design.md: the reflection's log-probs do
  not depend on the retry). The retry text goes to the reward as an extra field.
- `retry_reward` is the reward function: the task's verifier applied to the retry, 1.0 or 0.0.

What differs from `r3rl train`: TRL's loss, optimizer and logging are TRL's (its GRPO defaults, e.g.
`beta=0`, `loss_type`), one retry per reflection, one reflect/retry round, retries sampled with the
same settings as reflections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from r3rl.environment import prompts
from r3rl.environment.rollout import Failure
from r3rl.errors import InputError
from r3rl.mining.failure_set import load_failures
from r3rl.tasks.base import Task
from r3rl.types import Verdict

TESTED_TRL = ">=1.14,!=1.15.*,<1.17"  # as pinned in pyproject.toml's `trl` extra
INSTALL_HINT = f'TRL is not installed; install it with `pip install "r3rl[trl]"` (tested: trl{TESTED_TRL}).'

Messages = list[dict[str, Any]]


def reflection_conversation(task: Task, failure: Failure, instructions: prompts.Instructions) -> Messages:
    """The messages before a reflection: the same conversation `r3rl.environment.rollout.Rollout` builds."""
    return task.messages(failure.example) + [
        {"role": "assistant", "content": failure.attempt_text},
        {"role": "user", "content": instructions.reflect_text(failure.attempt_reason)},
    ]


def reflection_dataset(
    failures: str | Path | Iterable[Failure],
    task: Task,
    instructions: prompts.Instructions | None = None,
    max_per_example: int | None = None,
):
    """An r3rl failure set (a JSONL path from `r3rl mine`, or Failures) -> TRL's prompt dataset.

    One row per failed attempt, columns:
      prompt      conversational messages ending with the reflect instruction (TRL templates nothing:
                  `ReflectionRollout` encodes them with the model's chat template)
      example     the task example as a JSON string (Arrow cannot hold every task's dict shape)
      example_id  the failure set's id
      tools       the example's tool schemas as a JSON string, "" when the task has none
    """
    from datasets import Dataset

    instructions = instructions or prompts.Instructions()
    if isinstance(failures, (str, Path)):
        failures = load_failures(failures, max_per_example=max_per_example)
    rows: dict[str, list[Any]] = {"prompt": [], "example": [], "example_id": [], "tools": []}
    for f in failures:
        tools = task.tools(f.example)
        rows["prompt"].append(reflection_conversation(task, f, instructions))
        rows["example"].append(json.dumps(f.example, ensure_ascii=False, sort_keys=True))
        rows["example_id"].append(f.example_id or task.example_id(f.example))
        rows["tools"].append(json.dumps(tools, ensure_ascii=False) if tools else "")
    if not rows["prompt"]:
        raise InputError("the failure set is empty: there is nothing to reflect on")
    return Dataset.from_dict(rows)


def _prompt_key(messages: Messages) -> str:
    # Role and content only: Arrow may add None-valued keys when it unifies message schemas.
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def decode_generated(tokenizer, rows: list[list[int]], stop_ids: list[int]) -> list[str]:
    """Generated tokens as a verifier should see them, as `r3rl.engine.base.Engine.decode_generated`
    does: drop only the turn's control tokens (stop set, pad, BOS), keep tags such as `<tool_call>`."""
    drop = set(stop_ids) | {t for t in (tokenizer.pad_token_id, tokenizer.bos_token_id) if t is not None}
    return tokenizer.batch_decode([[t for t in row if t not in drop] for row in rows], skip_special_tokens=False)


class ReflectionRollout:
    """TRL's `rollout_func`: reflection as the completion, the retry after it as an extra field.

    `datasets` are the prompt datasets the trainer draws from (train, and eval if any): the
    rollout receives only the prompt messages, so the tool schemas of a function-calling example
    are looked up by its prompt. The retry instruction must be the one r3rl would use
    (`instructions`, default r3rl's).
    """

    def __init__(self, datasets: Any, instructions: prompts.Instructions | None = None):
        self.instructions = instructions or prompts.Instructions()
        self._tools: dict[str, list[dict[str, Any]] | None] = {}
        for ds in datasets if isinstance(datasets, (list, tuple)) else [datasets]:
            for n, row in enumerate(ds):
                key = _prompt_key(row["prompt"])
                tools = json.loads(row["tools"]) if row.get("tools") else None
                if key in self._tools and self._tools[key] != tools:
                    raise ValueError(
                        f"dataset row {n} (example {row.get('example_id')!r}) has the same prompt as another row "
                        "but different tools; give the examples distinct prompts"
                    )
                self._tools[key] = tools

    def tools_for(self, messages: Messages) -> list[dict[str, Any]] | None:
        key = _prompt_key(messages)
        if key not in self._tools:
            raise ValueError(
                "a prompt reached the rollout that is not in the datasets given to ReflectionRollout; "
                "pass every dataset the trainer uses (train and eval)"
            )
        return self._tools[key]

    def __call__(self, prompt_messages: list[Messages], trainer) -> dict[str, list[Any]]:
        if not hasattr(trainer, "_generate_single_turn") or not hasattr(trainer, "eos_token_ids"):
            raise RuntimeError(
                f"this TRL's GRPOTrainer lacks _generate_single_turn/eos_token_ids; r3rl is tested with trl{TESTED_TRL}"
            )
        tok = getattr(trainer, "_tokenizer", None) or trainer.processing_class
        stop_ids = [int(t) for t in trainer.eos_token_ids]
        mode = "train" if trainer.model.training else "eval"
        n_gen = trainer.num_generations if mode == "train" else trainer.num_generations_eval

        tools = [self.tools_for(m) for m in prompt_messages]
        contexts = [prompts.encode(tok, m, t) for m, t in zip(prompt_messages, tools)]  # B x [P_i]
        # One reflection per row; rows already hold each prompt n_gen times (vLLM dedups by n_gen).
        reflections, logprobs = trainer._generate_single_turn(contexts, None, {}, n_gen)  # B x [T_i]
        # The retry continues the same token stream: context + reflection + end of turn, retry turn, header.
        retry_prompts = [
            ctx + list(refl) + prompts.continuation_suffix(tok, msgs, self.instructions.retry, t, list(refl), stop_ids)
            for ctx, refl, msgs, t in zip(contexts, reflections, prompt_messages, tools)
        ]
        retries, _ = trainer._generate_single_turn(retry_prompts, None, {}, 1)  # each retry prompt is distinct
        return {
            "prompt_ids": contexts,
            "completion_ids": [list(r) for r in reflections],
            "logprobs": logprobs,
            "retry_text": decode_generated(tok, [list(r) for r in retries], stop_ids),
        }


def retry_reward(task: Task) -> Callable[..., list[float]]:
    """TRL reward function: the task's verdict on each row's retry (1.0 pass, 0.0 fail).

    Reads `retry_text` (from `ReflectionRollout`) and `example` (from `reflection_dataset`). The
    verifier's reason is logged to TRL's completions table next to the retry.
    """

    def r3rl_retry(prompts: list, completions: list, retry_text: list[str], example: list[str], **kwargs) -> list[float]:
        verdicts: list[Verdict] = []
        for ex, text in zip(example, retry_text):
            v = task.verify(json.loads(ex), text)
            if not isinstance(v, Verdict):
                raise TypeError(f"{type(task).__name__}.verify returned {type(v).__name__}, not Verdict")
            verdicts.append(v)
        log_extra = kwargs.get("log_extra")
        if log_extra is not None:
            log_extra("retry", list(retry_text))
            log_extra("retry_verdict", [v.reason or ("pass" if v.ok else "fail") for v in verdicts])
        return [1.0 if v.ok else 0.0 for v in verdicts]

    return r3rl_retry
