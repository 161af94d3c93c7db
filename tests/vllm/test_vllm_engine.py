"""VLLMEngine against HFEngine on the same float32 model (the trained demo model, head_dim 32).

One vLLM engine for the module. Prompts are the demo's own addition questions, so the model is
confident and greedy decoding has clear argmax margins.
"""

import pytest

from tests.vllm.conftest import needs_vllm, vllm_settings

needs_vllm()

import torch  # noqa: E402

from r3rl.config import GenerationConfig, ModelConfig  # noqa: E402
from r3rl.demo import model_path  # noqa: E402
from r3rl.engine.base import Continuation  # noqa: E402
from r3rl.engine.hf import HFEngine  # noqa: E402
from r3rl.engine.loading import load_model  # noqa: E402
from r3rl.engine.vllm import VLLMEngine  # noqa: E402
from r3rl.environment import prompts  # noqa: E402
from r3rl.types import SamplingParams  # noqa: E402

BLOCK = 32  # vllm_settings' KV block size
GREEDY_TOKENS = 48  # the length over which the two engines must agree token for token
# vLLM's CPU kernels and transformers' sum in different orders: float32 log-probs differ by ~1e-6.
LOGPROB_TOL = 1e-4


@pytest.fixture(scope="module")
def hf():
    model, tok = load_model(model_path(), dtype="float32", device="cpu")
    return HFEngine(model, tok)


@pytest.fixture(scope="module")
def engine(hf):
    gen = GenerationConfig(backend="vllm", vllm=vllm_settings())
    engine = VLLMEngine.from_config(gen, ModelConfig(name_or_path=model_path()), tokenizer=hf.tokenizer)
    yield engine
    engine.close()  # before the next module starts its own


def questions(tok, pairs):
    return [prompts.encode(tok, [{"role": "user", "content": f"What is {a} + {b}?"}]) for a, b in pairs]


PAIRS = [(12, 35), (48, 7), (90, 99), (3, 4), (61, 18), (77, 77)]


def teacher_forced_logprobs(model, prompt, tokens):
    """Raw log_softmax log-probs of `tokens` after `prompt` under the HF model."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()  # [T, V]
    return logits.log_softmax(-1), logits.log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


def test_greedy_matches_hf_token_for_token(engine, hf):
    ids = questions(hf.tokenizer, PAIRS)
    p = SamplingParams(max_new_tokens=GREEDY_TOKENS, temperature=0)
    ours, ref = engine.generate(ids, p), hf.generate(ids, p)
    for a, b in zip(ours, ref, strict=True):
        assert a[0].token_ids == b[0].token_ids
        assert a[0].text == b[0].text and a[0].finish_reason == b[0].finish_reason
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=LOGPROB_TOL)
    stops = set(engine.stop_token_ids())
    finished = [row[0] for row in ours if row[0].finish_reason == "stop"]
    assert finished, "the demo model should end its answers with <|im_end|>"
    for g in finished:  # the stop token is kept in token_ids and dropped from the text
        assert g.token_ids[-1] in stops and "<|im_end|>" not in g.text


def test_sampled_rows_use_top_k_and_report_raw_logprobs(engine, hf):
    ids = questions(hf.tokenizer, PAIRS[:3])
    p = SamplingParams(max_new_tokens=12, temperature=0.7, top_k=3, seed=1)
    out = engine.generate(ids, p, n=4)
    assert [len(row) for row in out] == [4, 4, 4]
    for prompt, row in zip(ids, out, strict=True):
        for g in row:
            assert 1 <= len(g.token_ids) <= 12 and len(g.logprobs) == len(g.token_ids)
            full, picked = teacher_forced_logprobs(hf.model, prompt, g.token_ids)
            # raw log_softmax, not the tempered/top-k one (which would be larger: renormalised over 3 tokens)
            assert g.logprobs == pytest.approx(picked.tolist(), abs=LOGPROB_TOL)
            rank = (full > picked[:, None]).sum(-1)  # [T] tokens strictly more likely than the sampled one
            assert int(rank.max()) < 3


def test_token_limit_and_zero_tokens(engine, hf):
    ids = questions(hf.tokenizer, PAIRS[:2])
    out = engine.generate(ids, SamplingParams(max_new_tokens=3, temperature=0), n=2)
    assert all(len(g.token_ids) <= 3 for row in out for g in row)
    assert any(g.finish_reason == "length" and len(g.token_ids) == 3 for row in out for g in row)
    empty = engine.generate(ids, SamplingParams(max_new_tokens=0))
    assert [(g.token_ids, g.finish_reason) for row in empty for g in row] == [([], "length")] * 2


def test_an_empty_stop_set_runs_to_the_limit(engine, hf):
    # stop_token_ids=[] (benchmarks) must not stop at the model's EOS either (vLLM's ignore_eos)
    ids = questions(hf.tokenizer, PAIRS[:1])
    p = SamplingParams(max_new_tokens=40, temperature=0)
    assert engine.generate(ids, p)[0][0].finish_reason == "stop"
    ours = VLLMEngine(engine.llm, hf.tokenizer, stop_token_ids=[]).generate(ids, p)[0][0]
    ref = HFEngine(hf.model, hf.tokenizer, stop_token_ids=[]).generate(ids, p)[0][0]
    assert len(ours.token_ids) == 40 and ours.token_ids == ref.token_ids


def test_continuation_equals_generating_the_whole_prompt(engine, hf):
    tok = hf.tokenizer
    ids = questions(tok, PAIRS[:4])
    suffix = tok("<|im_end|>\n<|im_start|>user\nTry again.<|im_end|>\n<|im_start|>assistant\n",
                 add_special_tokens=False)["input_ids"]
    greedy = SamplingParams(max_new_tokens=24, temperature=0)

    def then(i, j, depth, gen):
        return Continuation(greedy, suffix_ids=suffix) if depth == 0 else None

    engine.reset_prefix_cache()
    chained = engine.generate(ids, greedy, n=2, then=then)
    stats = engine.last_stats
    whole = [row[0].prompt_ids + row[0].token_ids + suffix for row in chained]
    scratch = engine.generate(whole, greedy)
    for row, fresh in zip(chained, scratch, strict=True):
        for g in row:
            assert g.next is not None and g.next.prompt_ids == g.prompt_ids + g.token_ids + suffix
            assert g.next.token_ids == fresh[0].token_ids
            assert g.next.logprobs == pytest.approx(fresh[0].logprobs, abs=LOGPROB_TOL)
    # the same chain through the hf backend
    ref = hf.generate(ids, greedy, n=2, then=then)
    assert [[g.next.token_ids for g in row] for row in chained] == [[g.next.token_ids for g in row] for row in ref]
    # A retry hits the prefix cache: only its suffix and the parent's last, partly filled block are prefilled.
    rows = [g for row in chained for g in row]
    cacheable = sum((len(g.prompt_ids) + len(g.token_ids) - 1) // BLOCK * BLOCK for g in rows)
    assert stats["requests"] == 16 and stats["cached_tokens"][1] >= cacheable > 0
    assert stats["prompt_tokens"][1] == sum(len(g.next.prompt_ids) for g in rows)


def test_a_continuation_may_give_a_whole_new_prompt(engine, hf):
    ids = questions(hf.tokenizer, PAIRS[:2])
    other = questions(hf.tokenizer, [(5, 5)])[0]
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    out = engine.generate(ids, greedy, then=lambda i, j, d, g: Continuation(greedy, prompt_ids=other) if d == 0 else None)
    alone = engine.generate([other], greedy)[0][0]
    assert all(row[0].next.prompt_ids == other and row[0].next.token_ids == alone.token_ids for row in out)


def test_on_tokens_counts_every_generated_token(engine, hf):
    seen = []
    engine.on_tokens = seen.append
    try:
        out = engine.generate(questions(hf.tokenizer, PAIRS[:3]), SamplingParams(max_new_tokens=10, temperature=1.0), n=2)
    finally:
        engine.on_tokens = None
    assert len(seen) > 1 and sum(seen) == sum(len(g.token_ids) for row in out for g in row)


def test_greedy_is_deterministic_and_a_seeded_call_repeats(engine, hf):
    """What a seed fixes on vLLM's CPU build (docs/vllm.md): greedy rows always; a sampled call repeats
    when run again from the same engine state (same rows, same prefix cache); another seed differs."""
    ids = questions(hf.tokenizer, PAIRS)
    greedy = SamplingParams(max_new_tokens=20, temperature=0)
    once, again = engine.generate(ids, greedy), engine.generate(ids, greedy)  # the second from the prefix cache
    assert [r[0].token_ids for r in once] == [r[0].token_ids for r in again]

    def sampled(seed):
        engine.reset_prefix_cache()
        out = engine.generate(ids, SamplingParams(max_new_tokens=20, temperature=1.0, seed=seed), n=3)
        return [[g.token_ids for g in row] for row in out]

    first = sampled(7)
    torch.manual_seed(12345)  # the caller's global RNG neither changes the call's samples ...
    before = torch.get_rng_state()
    assert sampled(7) == first
    assert torch.equal(torch.get_rng_state(), before)  # ... nor is it changed by the call
    assert sampled(8) != first


def test_bad_params_are_refused_before_vllm_sees_them(engine, hf):
    ids = questions(hf.tokenizer, PAIRS[:1])
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(ids, SamplingParams(top_p=0.0))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], SamplingParams())
