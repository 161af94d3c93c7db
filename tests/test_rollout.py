"""A scripted engine drives reflect/retry: which text lands in which turn, what is verified, what is recorded."""

import re

import pytest

from r3rl.config import GenerationConfig, RolloutConfig
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment import prompts
from r3rl.environment.rollout import Failure, Rollout
from r3rl.tasks.base import Task
from r3rl.types import Episode, Verdict


class EchoTask(Task):
    """Pass iff the completion equals the example's word."""

    name = "echo"

    def load_examples(self, split="train", n=None, seed=0):
        return [{"id": f"w{i}", "word": w} for i, w in enumerate(["apple", "pear", "plum"])][:n]

    def prompt(self, ex):
        return f"Say the word {ex['word']}."

    def verify(self, ex, completion):
        ok = completion.strip() == ex["word"]
        return Verdict(ok, "" if ok else f"expected {ex['word']}")


def last_user(prompt_text: str) -> str:
    turns = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt_text, flags=re.S)
    return turns[-1]


def script(prompt_text: str, j: int) -> str:
    user = last_user(prompt_text)
    word = re.search(r"Say the word (\w+)", prompt_text).group(1)
    if user.startswith("Say the word"):
        return "banana"  # first attempts always fail
    if "Reflect on what went wrong" in user:
        return "I should say the word." if j % 2 == 0 else "No idea."
    if user == prompts.DEFAULT_RETRY:
        # the retry passes only when the reflection (the last assistant turn) was the useful one
        reflection = re.findall(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", prompt_text, flags=re.S)[-1]
        return word if reflection == "I should say the word." else "cherry"
    if user == prompts.DEFAULT_RETRY_NO_REFLECTION:
        return "cherry"
    raise AssertionError(f"unexpected turn: {user!r}")


def make(tok, **rollout_kw):
    task = EchoTask()
    engine = ScriptedEngine(tok, script)
    gen = GenerationConfig(max_attempt_tokens=16, max_reflection_tokens=16, max_retry_tokens=16)
    return task, engine, Rollout(engine, task, gen, RolloutConfig(**rollout_kw))


def test_attempts_are_verified(tok):
    task, engine, roll = make(tok)
    atts = roll.attempts(task.load_examples(), n=2, seed=0)
    assert [len(a) for a in atts] == [2, 2, 2]
    assert all(a.text == "banana" and not a.verdict.ok and a.verdict.reason.startswith("expected") for row in atts for a in row)


def test_reflection_and_retry_turns_and_records(tok):
    task, engine, roll = make(tok)
    exs = task.load_examples()
    failures = [Failure(ex, "banana", "expected " + ex["word"]) for ex in exs]
    eps = roll.reflect_and_retry(failures, group_size=4, seed=1)
    assert len(eps) == 12
    for e in eps:
        useful = e.reflection_text == "I should say the word."
        assert e.retry_ok == useful and e.reward == float(useful)
        assert e.advantage == 0.0  # advantages are the trainer's job, never written here
        assert e.attempt_text == "banana" and not e.attempt_ok
        assert e.reflection_ids[-1] == tok.eos_token_id  # end-of-turn token is part of the reflection
        ctx = tok.decode(e.context_ids)
        # the context is task + failed attempt + reflect instruction, ending with the assistant header
        assert ctx.endswith(f"<|im_start|>assistant\nbanana<|im_end|>\n<|im_start|>user\n{prompts.DEFAULT_REFLECT}<|im_end|>\n<|im_start|>assistant\n")
        assert e.retry_reason == ("" if useful else "expected " + exs[int(e.example_id[1])]["word"])
    # groups are adjacent and keyed by failure
    assert len({e.group_id for e in eps}) == 3
    assert [e.group_id for e in eps] == sorted(e.group_id for e in eps)
    # the retry prompt is exactly context + reflection + suffix: nothing re-rendered in between
    retry_prompts = [p for p, _ in engine.calls if last_user(p) == prompts.DEFAULT_RETRY]
    assert len(retry_prompts) == 12
    assert retry_prompts[0].count(prompts.DEFAULT_REFLECT) == 1


def test_reason_is_hidden_by_default_and_shown_on_request(tok):
    for include in (False, True):
        task, engine, roll = make(tok, include_reason=include)
        ex = task.load_examples()[0]
        roll.reflect_and_retry([Failure(ex, "banana", "expected apple")], group_size=1, seed=0)
        reflect_prompt = engine.calls[0][0]
        assert ("expected apple" in reflect_prompt) == include


def test_sampling_settings_per_stage(tok):
    task, engine, roll = make(tok)
    roll.gen.max_reflection_tokens, roll.gen.max_retry_tokens = 12, 7
    roll.gen.reflection_temperature, roll.gen.retry_temperature = 0.7, 0.0
    roll.reflect_and_retry([Failure(task.load_examples()[0], "banana")], group_size=1, seed=0)
    (_, p_reflect), (_, p_retry) = engine.calls
    assert (p_reflect.max_new_tokens, p_reflect.temperature) == (12, 0.7)
    assert (p_retry.max_new_tokens, p_retry.temperature) == (7, 0.0)


def test_several_retries_average_the_reward(tok):
    def half_script(prompt_text, j):
        if last_user(prompt_text) == prompts.DEFAULT_RETRY:
            return "apple" if j % 2 == 0 else "nope"
        return script(prompt_text, j)

    task = EchoTask()
    engine = ScriptedEngine(tok, half_script)
    roll = Rollout(engine, task, GenerationConfig(), RolloutConfig(retries_per_reflection=4))
    eps = roll.reflect_and_retry([Failure(task.load_examples()[0], "banana")], group_size=2, seed=0)
    assert [e.reward for e in eps] == [0.5, 0.5]
    assert all(e.extra["retries"] == 4 for e in eps)
    # which failure an episode answers is a field; episodes.jsonl keeps it under "extra", as it always has
    assert [e.failure_index for e in eps] == [0, 0] and all(e.retry_class is None for e in eps)
    assert eps[0].to_json()["extra"] == {"retries": 4, "reflection_finish": "stop", "failure_index": 0}


def test_an_episode_writes_its_typed_fields_under_extra_in_the_old_order():
    e = Episode(example_id="x", group_id="g", context_ids=[], attempt_text="a", attempt_ok=False, reflection_ids=[],
                reflection_text="r", reflection_logprobs=[], retry_text="t", retry_ok=False, reward=0.0,
                failure_index=3, retry_class="wrong_sum", extra={"retries": 1, "reflection_finish": "stop"})
    row = e.to_json()
    assert list(row)[-1] == "extra" and "failure_index" not in row and "retry_class" not in row
    assert list(row["extra"].items()) == [("retries", 1), ("reflection_finish", "stop"), ("failure_index", 3),
                                          ("retry_class", "wrong_sum")]
    first = Episode(example_id="x", group_id="g", context_ids=[], attempt_text="a", attempt_ok=True, reflection_ids=[],
                    reflection_text="", reflection_logprobs=[], retry_text="", retry_ok=False, reward=1.0,
                    failure_index=0, attempt_class="")
    assert list(first.to_json()["extra"].items()) == [("failure_index", 0), ("attempt_class", "")]


def test_two_rounds_reflect_on_the_failed_retry(tok):
    task, engine, roll = make(tok, rounds=2)
    eps = roll.reflect_and_retry([Failure(task.load_examples()[0], "banana")], group_size=2, seed=0)
    # sample 0 reflects usefully and passes in round 1; sample 1 fails and gets a second round
    rounds = sorted((e.round, e.retry_ok) for e in eps)
    assert rounds == [(1, False), (1, True), (2, False)]
    second = [e for e in eps if e.round == 2][0]
    ctx = tok.decode(second.context_ids)
    assert ctx.count(prompts.DEFAULT_REFLECT) == 2 and "cherry" in ctx and "No idea." in ctx


def test_retry_without_reflection_control(tok):
    task, engine, roll = make(tok)
    gens = roll.retry_without_reflection([Failure(task.load_examples()[0], "banana")], seed=0)
    assert [g.text for g in gens] == ["cherry"]
    assert prompts.DEFAULT_REFLECT not in engine.calls[0][0]


class FlakyVerifierTask(EchoTask):
    """A verifier with a bug: it raises on the word 'pear'."""

    def verify(self, ex, completion):
        if ex["word"] == "pear":
            raise KeyError("boom")
        return super().verify(ex, completion)


def test_a_raising_verifier_is_a_counted_logged_failure(tok, capsys):
    roll = Rollout(ScriptedEngine(tok, lambda p, j: re.search(r"Say the word (\w+)", p).group(1)), FlakyVerifierTask(),
                   GenerationConfig(), RolloutConfig(max_verifier_errors=5))
    rows = roll.attempts(FlakyVerifierTask().load_examples(), n=2, seed=0)
    oks = [[a.verdict.ok for a in row] for row in rows]
    assert oks == [[True, True], [False, False], [True, True]]  # the scripted answer is right; pear's verifier broke
    assert rows[1][0].verdict.reason == "verifier error: KeyError"
    assert rows[1][0].verdict.failure_class == "verifier_error"  # its own class, outside the task's vocabulary
    assert roll.verify_errors == 2
    err = capsys.readouterr().err
    assert err.count("FlakyVerifierTask.verify raised on example w1: KeyError: 'boom'") == 2


def test_too_many_verifier_errors_stop_the_run_with_a_clear_message(tok):
    from r3rl.environment.rollout import VerifierError

    roll = Rollout(ScriptedEngine(tok, lambda p, j: "x"), FlakyVerifierTask(), GenerationConfig(),
                   RolloutConfig(max_verifier_errors=2))
    with pytest.raises(VerifierError, match=r"raised 3 times \(more than rollout.max_verifier_errors=2\).*example w1"):
        roll.attempts(FlakyVerifierTask().load_examples(), n=3, seed=0)


class CountingTask(EchoTask):
    """Counts verify calls; raises on retries that say 'cherry' (a verifier bug), like FlakyVerifierTask."""

    def __init__(self, raise_on_cherry=False):
        self.calls, self.raise_on_cherry = 0, raise_on_cherry

    def verify(self, ex, completion):
        self.calls += 1
        if self.raise_on_cherry and completion.strip() == "cherry":
            raise KeyError("boom")
        return super().verify(ex, completion)


@pytest.mark.parametrize("raising", [False, True])
def test_each_retry_of_several_rounds_is_verified_once(tok, raising):
    """rounds=3, every retry fails: three retries per chain, three verify calls (not five), and a raising
    verifier counts each broken retry once in verify_errors."""
    task = CountingTask(raise_on_cherry=raising)
    always_wrong = lambda p, j: "No idea." if "Reflect on what went wrong" in last_user(p) else "cherry"  # noqa: E731
    roll = Rollout(ScriptedEngine(tok, always_wrong), task, GenerationConfig(), RolloutConfig(rounds=3, max_verifier_errors=100))
    eps = roll.reflect_and_retry([Failure(task.load_examples()[0], "banana")], group_size=2, seed=0)
    assert sorted(e.round for e in eps) == [1, 1, 2, 2, 3, 3] and not any(e.retry_ok for e in eps)
    assert task.calls == 6  # 2 chains x 3 retries
    assert roll.verify_errors == (6 if raising else 0)
    if raising:
        assert all(e.retry_reason == "verifier error: KeyError" for e in eps)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rounds_compose_with_several_retries_per_reflection(tok, k):
    """rounds x retries_per_reflection: every round has its k retries, and a failed first retry is
    reflected on again while rounds remain (k > 1 used to stop after round 1)."""
    task = CountingTask()
    always_wrong = lambda p, j: "No idea." if "Reflect on what went wrong" in last_user(p) else "cherry"  # noqa: E731
    engine = ScriptedEngine(tok, always_wrong)
    roll = Rollout(engine, task, GenerationConfig(), RolloutConfig(rounds=2, retries_per_reflection=k))
    eps = roll.reflect_and_retry([Failure(task.load_examples()[0], "banana")], group_size=2, seed=0)
    assert sorted(e.round for e in eps) == [1, 1, 2, 2]
    assert all(e.extra["retries"] == k for e in eps) and not any(e.retry_ok for e in eps)
    assert task.calls == 2 * 2 * k  # 2 chains x 2 rounds x k retries, each verified once
    second = [e for e in eps if e.round == 2][0]
    ctx = tok.decode(second.context_ids)
    assert ctx.count(prompts.DEFAULT_REFLECT) == 2 and "cherry" in ctx
    assert second.retry_prompt_ids[: len(second.context_ids)] == second.context_ids  # the retry continues it


@pytest.mark.parametrize(("rounds", "k", "calls"), [(1, 1, 1), (3, 1, 1), (1, 2, 2), (2, 2, 3)])
def test_one_sample_turns_continue_inside_the_engine_call(tok, rounds, k, calls):
    """A one-sample turn (a retry with k = 1, a later round's reflection) is a suffix continuation of the
    sequence the engine holds; only several samples from one prompt (k > 1) take a call of their own."""
    task = EchoTask()
    always_wrong = lambda p, j: "No idea." if "Reflect on what went wrong" in last_user(p) else "cherry"  # noqa: E731
    engine = ScriptedEngine(tok, always_wrong)
    seen = []
    generate = engine.generate
    engine.generate = lambda prompts_, params, n=1, then=None: seen.append(n) or generate(prompts_, params, n, then)
    roll = Rollout(engine, task, GenerationConfig(), RolloutConfig(rounds=rounds, retries_per_reflection=k))
    env, lines = roll.trajectories([Failure(task.load_examples()[0], "banana")], group_size=2, seed=0)
    assert seen == [2] + [k] * (calls - 1)
    for traj in (t for row in lines for t in row):
        assert [t.role for t in traj.generated()] == ["reflection", "retry"] * rounds
        assert all(len(t.alternatives) == k - 1 for t in traj.generated("retry"))
        assert traj.loss_mask() == [int(t.is_generated) for t in traj.turns for _ in t.token_ids]
