"""Weight sync from a training model into vLLM, the prefix-cache reset, and a whole rollout over vLLM.

One vLLM engine for the module, built the way the trainer builds it (`model=` the policy). Each
test takes its own optimizer step on the policy first and checks that the step changed the HF
model's greedy output, so "vLLM equals the updated model" cannot pass by the step doing nothing.
"""

import pytest

from tests.vllm.conftest import needs_vllm, vllm_settings

needs_vllm()

import torch  # noqa: E402

from r3rl.config import GenerationConfig, ModelConfig, RolloutConfig  # noqa: E402
from r3rl.demo import model_path  # noqa: E402
from r3rl.demo.addition import AdditionTask  # noqa: E402
from r3rl.engine.hf import HFEngine  # noqa: E402
from r3rl.engine.loading import load_model  # noqa: E402
from r3rl.engine.vllm import VLLMEngine  # noqa: E402
from r3rl.environment import prompts  # noqa: E402
from r3rl.environment.rollout import Rollout, failed_attempts  # noqa: E402
from r3rl.types import SamplingParams  # noqa: E402

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)
LOGPROB_TOL = 1e-4  # float32, different summation orders (tests/vllm/test_vllm_engine.py)


@pytest.fixture(scope="module")
def policy():
    model, tok = load_model(model_path(), dtype="float32", device="cpu")
    return model, tok


@pytest.fixture(scope="module")
def engine(policy):
    model, tok = policy
    gen = GenerationConfig(backend="vllm", vllm=vllm_settings())
    engine = VLLMEngine.from_config(gen, ModelConfig(name_or_path=model_path()), model=model, tokenizer=tok)
    yield engine
    engine.close()  # before the next module starts its own


def questions(tok, pairs=((12, 35), (48, 7), (90, 99), (61, 18)), system=""):
    head = [{"role": "system", "content": system}] if system else []
    return [prompts.encode(tok, head + [{"role": "user", "content": f"What is {a} + {b}?"}]) for a, b in pairs]


# Makes each prompt longer than one 32-token KV block, so that a repeated prompt can hit the prefix cache.
SYSTEM = "You are a helpful assistant. Put the final answer inside <answer></answer> tags. Let me add the digits."


def tokens(rows):
    return [[g.token_ids for g in row] for row in rows]


def optimizer_step(model, tok, text="I made an arithmetic mistake. I should be more careful.", lr=3e-3):
    """One AdamW step raising the likelihood of `text` (enough to move greedy answers of the tiny model)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()


def test_the_trainers_weights_reach_vllm_after_an_optimizer_step(engine, policy):
    model, tok = policy
    ids = questions(tok)
    hf = HFEngine(model, tok)
    before = engine.generate(ids, GREEDY)
    assert tokens(before) == tokens(hf.generate(ids, GREEDY))
    optimizer_step(model, tok)
    updated = hf.generate(ids, GREEDY)
    assert tokens(updated) != tokens(before), "the optimizer step must change the greedy output"
    assert tokens(engine.generate(ids, GREEDY)) == tokens(before)  # vLLM holds its own copy until synced
    engine.sync_weights(model)
    after = engine.generate(ids, GREEDY)
    assert tokens(after) == tokens(updated)
    for a, b in zip(after, updated, strict=True):
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=LOGPROB_TOL)


def test_a_rollout_after_a_sync_never_reuses_the_old_weights_cache(engine, policy):
    model, tok = policy
    (prompt,) = questions(tok, pairs=((23, 45),), system=SYSTEM)  # one prompt: no sibling shares its blocks
    assert len(prompt) > 32
    engine.generate([prompt], GREEDY)
    engine.generate([prompt], GREEDY)
    assert engine.last_stats["cached_tokens"][0] > 0  # a repeated prompt is served from the prefix cache ...
    optimizer_step(model, tok, text="The answer is <answer>7</answer>.")
    engine.sync_weights(model)
    after = engine.generate([prompt], GREEDY)
    assert engine.last_stats["cached_tokens"][0] == 0  # ... but not after a weight sync
    assert tokens(after) == tokens(HFEngine(model, tok).generate([prompt], GREEDY))


def test_lora_policies_are_synced_as_merged_weights(engine, policy):
    from peft import LoraConfig, get_peft_model

    base, tok = load_model(model_path(), dtype="float32", device="cpu")
    torch.manual_seed(0)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    ids = questions(tok)
    with lora.disable_adapter():
        plain = HFEngine(lora, tok).generate(ids, GREEDY)
    adapted = HFEngine(lora, tok).generate(ids, GREEDY)
    assert tokens(adapted) != tokens(plain), "the random adapter must change the greedy output"
    state = {k: v.clone() for k, v in lora.state_dict().items()}
    engine.sync_weights(lora)
    assert tokens(engine.generate(ids, GREEDY)) == tokens(adapted)
    assert all(torch.equal(v, state[k]) for k, v in lora.state_dict().items())  # the training model is untouched
    engine.sync_weights(policy[0])  # leave the module's engine on the policy's weights


def test_reflect_and_retry_over_vllm_gives_the_hf_backends_episodes(engine, policy):
    model, tok = policy
    engine.sync_weights(model)
    gen = GenerationConfig(max_attempt_tokens=16, max_reflection_tokens=32, max_retry_tokens=16,
                           attempt_temperature=0, reflection_temperature=0, retry_temperature=0)
    task = AdditionTask()
    ours = Rollout(engine, task, gen, RolloutConfig(group_size=2))
    ref = Rollout(HFEngine(model, tok), task, gen, RolloutConfig(group_size=2))
    examples = task.load_examples("train", 24, seed=0)
    failures = [a.as_failure(task.example_id(a.example))
                for row in ours.attempts(examples, n=1, seed=0) for a in failed_attempts(row)][:4]
    assert failures, "the policy should fail some additions after the test's optimizer steps"
    episodes, expected = ours.reflect_and_retry(failures, 2, seed=0), ref.reflect_and_retry(failures, 2, seed=0)
    assert len(episodes) == 2 * len(failures)
    for e, x in zip(episodes, expected, strict=True):
        assert (e.group_id, e.reflection_ids, e.retry_ids, e.retry_text, e.reward) == \
            (x.group_id, x.reflection_ids, x.retry_ids, x.retry_text, x.reward)
        assert e.reflection_logprobs == pytest.approx(x.reflection_logprobs, abs=LOGPROB_TOL)
        assert len(e.reflection_logprobs) == len(e.reflection_ids) > 0
