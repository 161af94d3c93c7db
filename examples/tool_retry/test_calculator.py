"""The calculator turn, written only against the environment's hooks, runs through r3rl's own loop and records."""

from __future__ import annotations

import re

import pytest

from examples.tool_retry.calculator import CalculatorAddition, CalculatorRetryEnvironment, calculator
from r3rl.config import GenerationConfig, RolloutConfig
from r3rl.demo import tiny
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment import prompts
from r3rl.environment.rollout import Failure, Rollout


@pytest.mark.parametrize(("text", "out"), [
    ("carry the one: <calc>47 + 38</calc>", "calc: 47 + 38 = 85"),
    ("<calc>1+1</calc> then <calc>(2 + 3) * 4</calc>", "calc: (2 + 3) * 4 = 20"),
    ("no tool here", "calc: no <calc>expression</calc> in the reflection"),
    ("<calc>__import__('os')</calc>", "calc: cannot compute"),
    ("<calc>1/0</calc>", "calc: cannot compute '1/0'"),
])
def test_the_tool_never_runs_model_text(text, out):
    assert calculator(text).startswith(out)


def _last(role: str, prompt_text: str) -> str:
    return re.findall(rf"<\|im_start\|>{role}\n(.*?)<\|im_end\|>", prompt_text, flags=re.S)[-1]


def script(prompt_text: str, j: int) -> str:
    """First attempts are wrong; reflection j = 0 asks the calculator, j = 1 does not; a retry copies the tool's sum."""
    a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", prompt_text).groups())
    user = _last("user", prompt_text)
    if user.startswith("What is"):
        return "<answer>0</answer>"
    if user.startswith(prompts.DEFAULT_REFLECT):
        assert "<calc>expression</calc>" in user  # the reflect_message hook added the hint
        return f"Add again: <calc>{a} + {b}</calc>" if j % 2 == 0 else "I was careless."
    assert user == prompts.DEFAULT_RETRY
    m = re.search(r"= (\d+)$", _last("tool", prompt_text))
    return f"<answer>{m.group(1)}</answer>" if m else "<answer>1</answer>"


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


def test_the_retry_sees_the_tool_output_and_continues_the_same_tokens(tok):
    task = CalculatorAddition()
    roll = Rollout(ScriptedEngine(tok, script), task, GenerationConfig(), RolloutConfig())
    assert roll.environment is CalculatorRetryEnvironment  # read from the task
    ex = task.load_examples("train", n=1, seed=0)[0]
    eps = roll.reflect_and_retry([Failure(ex, "<answer>0</answer>", "wrong")], group_size=2, seed=0)
    assert [e.retry_ok for e in eps] == [True, False]  # only the reflection that used the calculator passes
    for e in eps:
        # token-in, token-out: the retry's prompt is the reflection's context + its sampled ids + a written suffix
        assert e.retry_prompt_ids[: len(e.context_ids) + len(e.reflection_ids)] == e.context_ids + e.reflection_ids
    suffix = eps[0].retry_prompt_ids[len(eps[0].context_ids) + len(eps[0].reflection_ids):]
    tool = f"calc: {ex['a']} + {ex['b']} = {ex['a'] + ex['b']}"
    assert tok.decode(suffix) == (f"\n<|im_start|>tool\n{tool}<|im_end|>\n"
                                  f"<|im_start|>user\n{prompts.DEFAULT_RETRY}<|im_end|>\n<|im_start|>assistant\n")


def test_trajectories_carry_the_tool_turn_with_a_zero_loss_mask(tok):
    task = CalculatorAddition()
    roll = Rollout(ScriptedEngine(tok, script), task, GenerationConfig(), RolloutConfig(rounds=2))
    ex = task.load_examples("train", n=1, seed=0)[0]
    env, lines = roll.trajectories([Failure(ex, "<answer>0</answer>", "wrong")], group_size=2, seed=0)
    passed, failed = lines[0]
    assert [t.role for t in passed.turns] == ["context", "reflection", "context", "retry"]
    assert [t.role for t in failed.turns] == ["context", "reflection", "context", "retry"] * 2  # a second round
    assert failed.state["tool_calls"] == ["calc: no <calc>expression</calc> in the reflection"] * 2
    mask = passed.loss_mask()
    assert len(mask) == len(passed.ids())
    assert sum(mask) == sum(len(t.token_ids) for t in passed.generated())  # only sampled tokens are trainable
    assert passed.turns[-1].verdict.ok and not failed.turns[3].verdict.ok  # judged to decide on round 2
