"""train.objective: each objective's loss rows cover exactly the tokens it trains, with the loss worked out by hand.

Rollouts come from a scripted engine on the tiny tokenizer (so every token id is known), the
loss from the trainer's own `_micro` / `_backward` with the policy's log-probs replaced by
fixed numbers, so the expected loss is arithmetic on the page.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from r3rl.config import OBJECTIVE_STAGES, GenerationConfig, RolloutConfig, load_config
from r3rl.demo.tiny import build_tokenizer, save_tiny_model
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment import prompts
from r3rl.environment.rollout import Failure, Rollout
from r3rl.training import grpo
from r3rl.training.objectives import OBJECTIVES, Objective, build_objective
from r3rl.training.trainer import Trainer
from r3rl.types import Episode

from tests.test_rollout import EchoTask
from tests.trainer_fixtures import tiny_config

G = 4
USEFUL = "I should say the word."


def _last(role: str, text: str) -> str:
    return re.findall(rf"<\|im_start\|>{role}\n(.*?)<\|im_end\|>", text, flags=re.S)[-1]


def script(prompt_text: str, j: int) -> str:
    """Attempts pass for even samples; reflections are useful for even samples; a retry passes after a useful one."""
    user = _last("user", prompt_text)
    word = re.search(r"Say the word (\w+)", prompt_text).group(1)
    if user.startswith("Say the word"):
        return word if j % 2 == 0 else "banana"
    if "Reflect on what went wrong" in user:
        return USEFUL if j % 2 == 0 else "No idea."
    if user == prompts.DEFAULT_RETRY:
        return word if _last("assistant", prompt_text) == USEFUL else "cherry"
    raise AssertionError(f"unexpected turn: {user!r}")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def rollout(tok):
    gen = GenerationConfig(max_attempt_tokens=16, max_reflection_tokens=16, max_retry_tokens=16)
    return Rollout(ScriptedEngine(tok, script), EchoTask(), gen, RolloutConfig(group_size=G))


@pytest.fixture(scope="module")
def failures():
    task = EchoTask()
    return [Failure(ex, "banana", f"expected {ex['word']}", ex["id"]) for ex in task.load_examples(n=2)]


def _ids(tok, text: str) -> list[int]:
    """A scripted completion's ids: the text's tokens and the stop token."""
    return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _masked(objective: str, rollout, failures, tok):
    """(episodes, rows, [B, T] batch) of one micro-batch through the objective, as the trainer lays it out."""
    obj = build_objective(objective)
    eps = obj.episodes(rollout, failures, G, seed=7)
    rows = obj.rows(eps)
    batch = grpo.build_completion_batch([r.context for r in rows], [r.completion for r in rows], tok.pad_token_id)
    return eps, rows, batch


def _trained(batch, i):
    ids, _, cm = batch
    return ids[i][cm[i].bool()].tolist(), ids[i][: int(cm[i].nonzero()[0])].tolist()


def _task_prompt(tok, word):
    return prompts.encode(tok, [{"role": "user", "content": f"Say the word {word}."}])


def test_every_objective_has_a_class_and_the_config_knows_its_stage():
    assert set(OBJECTIVES) == set(Objective)
    for name in Objective:
        assert OBJECTIVE_STAGES[name.value] == build_objective(name).stage
    gen = GenerationConfig(attempt_temperature=0.7, reflection_temperature=0.9, retry_temperature=0.5)
    assert [build_objective(o).temperature(gen) for o in Objective] == [0.9, 0.7, 0.5, 0.5]
    assert load_config(None, []).train.objective == "reflection"


def test_the_config_knows_which_objectives_normalise_within_a_group():
    """config.GROUP_NORMALISED_OBJECTIVES (which refuse rollout.group_size=1) are exactly those whose
    objective gives a group of one no signal."""
    import torch

    from r3rl.config import GROUP_NORMALISED_OBJECTIVES

    for name in Objective:
        _, no_signal = build_objective(name).advantages(torch.tensor([1.0]), torch.tensor([0]), "normalized")
        assert bool(no_signal[0]) == (name.value in GROUP_NORMALISED_OBJECTIVES), name


def test_reflection_rows_are_the_reflections_in_the_reflect_context(tok, rollout, failures):
    eps, rows, batch = _masked("reflection", rollout, failures, tok)
    assert len(rows) == len(eps) == 2 * G
    for i, e in enumerate(eps):
        trained, context = _trained(batch, i)
        # members of a group are adjacent, in sample order: even samples wrote the useful reflection
        assert trained == e.reflection_ids == _ids(tok, USEFUL if i % G % 2 == 0 else "No idea.")
        assert context == e.context_ids and tok.decode(context).endswith("<|im_start|>assistant\n")
        assert "banana" in tok.decode(context) and "Reflect on what went wrong" in tok.decode(context)
        assert int(batch[2][i].sum()) == len(e.reflection_ids)  # nothing of the retry


def test_first_attempt_rows_are_fresh_attempts_in_the_task_prompt(tok, rollout, failures):
    eps, rows, batch = _masked("first_attempt", rollout, failures, tok)
    assert len(rows) == len(eps) == 2 * G
    for i, e in enumerate(eps):
        word = failures[e.failure_index].example["word"]
        j = i % G
        trained, context = _trained(batch, i)
        assert trained == _ids(tok, word if j % 2 == 0 else "banana")
        assert context == _task_prompt(tok, word)  # only the task: no failed attempt, no reflection
        assert e.reward == float(j % 2 == 0) and e.reflection_ids == [] and e.retry_ids == []
    assert len({e.group_id for e in eps}) == 2  # a group = the G attempts at one failure's example


def test_retry_rows_are_the_retries_after_the_reflection(tok, rollout, failures):
    eps, rows, batch = _masked("retry", rollout, failures, tok)
    assert len(rows) == len(eps) == 2 * G
    for i, e in enumerate(eps):
        word = failures[e.failure_index].example["word"]
        trained, context = _trained(batch, i)
        assert trained == e.retry_ids == _ids(tok, word if e.reflection_text == USEFUL else "cherry")
        # the retry's own prompt: the reflection context, the reflection, then the retry instruction and header
        assert context[: len(e.context_ids) + len(e.reflection_ids)] == e.context_ids + e.reflection_ids
        assert tok.decode(context[len(e.context_ids) + len(e.reflection_ids):]).strip().endswith(
            prompts.DEFAULT_RETRY + "<|im_end|>\n<|im_start|>assistant")
        assert build_objective("retry").reward(e) == float(e.retry_ok)


def test_distill_retry_rows_are_the_successful_retries_in_the_task_prompt(tok, rollout, failures):
    eps, rows, batch = _masked("distill_retry", rollout, failures, tok)
    passed = [e for e in eps if e.retry_ok]
    assert len(passed) == G and len(rows) == len(passed)  # failed retries give no row
    for i, r in enumerate(rows):
        e = eps[r.episode]
        word = failures[e.failure_index].example["word"]
        trained, context = _trained(batch, i)
        assert e.retry_ok and trained == e.retry_ids == _ids(tok, word)
        assert context == _task_prompt(tok, word)  # the failed attempt and the reflection are taken out
        assert "banana" not in tok.decode(context) and USEFUL not in tok.decode(context)


@pytest.mark.parametrize("objective", [o.value for o in Objective])
def test_rows_are_read_from_the_rollout_turns(objective, rollout, failures):
    """Each objective trains the rollout's own turns (Episode.turns: the engine's ids and log-probs, the
    trajectory before them as context), and they are the same rows the episode's flat fields give."""
    obj = build_objective(objective)
    eps = obj.episodes(rollout, failures, G, seed=7)
    role = {"reflection": "reflection", "first_attempt": "attempt"}.get(objective, "retry")
    rows = obj.rows(eps)
    assert rows and all(eps[r.episode].turns is not None for r in rows)
    for r in rows:
        turn = eps[r.episode].turns.turn(role)
        assert r.completion is turn.token_ids and r.sampling_logprobs is turn.logprobs
        if objective != "distill_retry":
            assert r.context == eps[r.episode].turns.trajectory.prompt_ids(turn)
    flat = [Episode(**{k: v for k, v in vars(e).items() if k != "turns"}) for e in eps]
    assert [(r.episode, r.context, r.completion, r.sampling_logprobs) for r in obj.rows(flat)] == \
        [(r.episode, r.context, r.completion, r.sampling_logprobs) for r in rows]


# ----------------------------------------------------------------------------- the loss by hand


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """batch 2 failures x G 2: the loss's normaliser is batch x G = 4."""
    tmp = tmp_path_factory.mktemp("obj")
    model_dir = save_tiny_model(tmp / "model", hidden_size=32, layers=1, heads=2, kv_heads=1)
    cfg = tiny_config(model_dir, tmp / "run", batch_size=2, micro_batch_size=2, steps=1, save_every=0)
    cfg.rollout.group_size = 2
    return Trainer(cfg, show_progress=False)


def _episode(group, *, reward=0.0, retry_ok=False, reflection=(), retry=(), attempt=()):
    n = lambda ids: [0.0] * len(ids)  # noqa: E731 - sampling log-probs, unused here
    return Episode(example_id=group, group_id=group, context_ids=[1, 2, 3], attempt_text="", attempt_ok=False,
                   reflection_ids=list(reflection), reflection_text="", reflection_logprobs=n(reflection),
                   retry_text="", retry_ok=retry_ok, reward=reward, retry_ids=list(retry),
                   attempt_prompt_ids=[1, 2], attempt_ids=list(attempt), attempt_logprobs=n(attempt),
                   retry_prompt_ids=[1, 2, 3] + list(reflection) + [9], retry_logprobs=n(retry))


# Two rows: row 0 has 2 completion tokens, row 1 has 1. log-probs now (logp) and before the update (old):
LOGP = [[-1.0, -2.0], [-0.5]]
OLD = [[-1.1, -2.0], [-0.3]]
A = 0.5 / (math.sqrt(0.5) + 1e-4)  # rewards {1, 0}: mean 0.5, sample std sqrt(0.5), eps 1e-4 -> +-0.70706


def _grpo_by_hand(adv0, adv1):
    """-(1/4) [mean_t min(r A0, clip(r) A0) of row 0 + the same of row 1]; ratios e^0.1, 1 and e^-0.2, all inside [0.8, 1.2]."""
    row0 = (math.exp(0.1) * adv0 + 1.0 * adv0) / 2
    row1 = math.exp(-0.2) * adv1
    return -(row0 + row1) / 4


def _loss(trainer, micro, monkeypatch):
    """trainer._backward with the policy's log-probs set to LOGP (and the old ones to OLD) at the completion positions."""
    mask = micro.batch[2].bool()
    logp, old = torch.zeros(mask.shape), torch.zeros(mask.shape)
    for i in range(mask.shape[0]):
        logp[i][mask[i]], old[i][mask[i]] = torch.tensor(LOGP[i]), torch.tensor(OLD[i])
    logp.requires_grad_(True)
    policy = trainer.policy
    monkeypatch.setattr(trainer, "policy", lambda *batch: logp * 1.0)
    with trainer.acc.accumulate(policy):
        stats = trainer._backward(micro, old)
    monkeypatch.setattr(trainer, "policy", policy)
    trainer.opt.zero_grad(set_to_none=True)
    return stats["loss"]


@pytest.mark.parametrize("objective,episodes,completions,adv", [
    ("reflection", [_episode("g", reward=1.0, retry_ok=True, reflection=[4, 5], retry=[20]),
                    _episode("g", reward=0.0, reflection=[6], retry=[21])], [[4, 5], [6]], [A, -A]),
    ("first_attempt", [_episode("g", reward=1.0, attempt=[7, 8]), _episode("g", reward=0.0, attempt=[10])],
     [[7, 8], [10]], [A, -A]),
    # the retry objective's reward is the trained retry's verdict, not the episode's reward (here 0.5)
    ("retry", [_episode("g", reward=0.5, retry_ok=True, reflection=[4], retry=[20, 21]),
               _episode("g", reward=0.5, retry_ok=False, reflection=[5], retry=[22])], [[20, 21], [22]], [A, -A]),
])
def test_grpo_objectives_loss_by_hand(trainer, monkeypatch, objective, episodes, completions, adv):
    monkeypatch.setattr(trainer, "objective", build_objective(objective))
    micro = trainer._micro(episodes)
    ids, _, cm = micro.batch
    assert [ids[i][cm[i].bool()].tolist() for i in range(2)] == completions
    assert micro.advantages.tolist() == pytest.approx(adv, abs=1e-6)
    assert _loss(trainer, micro, monkeypatch) == pytest.approx(_grpo_by_hand(*adv), abs=1e-6)


def test_distill_retry_loss_by_hand(trainer, monkeypatch):
    """Two successful retries (advantage 1 each) and one failed (no row), in one group:
    loss = -(1/4) [mean(e^0.1, 1) + e^-0.2] (rewards are not normalised; the constant stays batch x G)."""
    monkeypatch.setattr(trainer, "objective", build_objective("distill_retry"))
    eps = [_episode("g", reward=1.0, retry_ok=True, reflection=[4], retry=[20, 21]),
           _episode("g", reward=0.0, retry_ok=False, reflection=[5], retry=[23]),
           _episode("g", reward=1.0, retry_ok=True, reflection=[6], retry=[22])]
    micro = trainer._micro(eps)
    ids, _, cm = micro.batch
    assert [ids[i][cm[i].bool()].tolist() for i in range(2)] == [[20, 21], [22]]
    assert [ids[i][: int(cm[i].nonzero()[0])].tolist() for i in range(2)] == [[1, 2], [1, 2]]  # the task prompt
    assert micro.advantages.tolist() == [1.0, 1.0]
    assert micro.stats["zero_adv"] == 1.0 and micro.stats["reward"] == 2.0
    assert [e.advantage for e in eps] == [1.0, 0.0, 1.0]
    expected = -((math.exp(0.1) + 1.0) / 2 + math.exp(-0.2)) / 4
    assert _loss(trainer, micro, monkeypatch) == pytest.approx(expected, abs=1e-6)
    # a group without a success contributes nothing
    assert trainer._micro([_episode("h", retry=[20]), _episode("h", retry=[21])]).batch is None


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("objective", [o.value for o in Objective])
def test_each_objective_trains_two_steps_on_the_demo(tmp_path, objective):
    from r3rl.demo.run import demo_config

    run = tmp_path / objective
    cfg = demo_config(run, overrides=[
        f"train.objective={objective}", "train.steps=2", "train.save_every=0", "failures.num_examples=64",
        "generation.attempt_temperature=0.8", "generation.retry_temperature=0.9",
    ])
    trainer = Trainer(cfg, show_progress=False)
    assert trainer.policy.temperature == {"reflection": 1.0, "first_attempt": 0.8}.get(objective, 0.9)
    final = trainer.train()
    assert (final / "config.json").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["episodes"] == cfg.train.batch_size * cfg.rollout.group_size for r in rows)
    assert any(r["zero_adv_frac"] < 1 and r["grad_norm"] > 0 for r in rows), rows  # some rows carried a gradient
    assert all(math.isfinite(r["loss"]) for r in rows)
