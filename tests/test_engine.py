"""HFEngine: the optimised paths (shared prefill, KV-cache continuation, micro-batches)
give exactly what the plain path and transformers' own generate give.

The tiny model's weights are re-drawn with a larger spread than the default
initialisation: at std 0.02 a random model mostly echoes its last input token,
which would make "identical outputs" a weak check. A stop set of about 6% of the
vocabulary makes rows stop at different steps, so mid-row padding is exercised.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from r3rl.config import GenerationConfig  # noqa: E402
from r3rl.demo import tiny  # noqa: E402
from r3rl.engine import Continuation, HFEngine, load_engine, load_model  # noqa: E402
from r3rl.engine.sampling import RowSampling, filter_logits, sample_next  # noqa: E402
from r3rl.types import Generation, SamplingParams  # noqa: E402

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)
TEXTS = [
    "Use the numbers to create an equation that equals the target.",
    "What is the sum? 1 2 3",
    "The sum is 42",
    "I made an arithmetic mistake. I should be more careful. The answer is",
]


def _spread_weights(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one thread is ~10x faster than two spinning ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tok):
    return _spread_weights(tiny.build_model(tok, layers=2))


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def stops(tok):
    return [t for t in range(len(tok)) if t % 17 == 3]


@contextmanager
def record_forward_shapes(model: torch.nn.Module):
    """(batch, query length) of every forward call made while the block runs."""
    shapes: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield shapes
    finally:
        handle.remove()


def chain(gen: Generation | None) -> list[tuple[list[int], list[int], str]]:
    """A generation and all its continuations, as comparable tuples."""
    out = []
    while gen is not None:
        out.append((gen.prompt_ids, gen.token_ids, gen.finish_reason))
        gen = gen.next
    return out


def scripted_then(max_depth: int = 2):
    """Per-row suffixes of 0-3 tokens, some rows dropped, a depth-2 turn, lengths that differ by row."""

    def then(i: int, j: int, depth: int, gen: Generation) -> Continuation | None:
        if depth >= max_depth or (i + j + depth) % 4 == 3:
            return None
        suffix = [40 + k for k in range((i + 2 * j + depth) % 4)]
        return Continuation(SamplingParams(max_new_tokens=4 + (i + j) % 5, temperature=0.0), suffix_ids=suffix)

    return then


def test_greedy_identical_with_and_without_optimisations(model, tok, prompts, stops):
    then = scripted_then()
    reference = HFEngine(model, tok, share_prefix=False, reuse_cache=False, stop_token_ids=stops)
    expected = reference.generate(prompts, GREEDY, n=3, then=then)
    for cap in (64, 5, 2):  # one batch; a prompt's 3 samples per batch; samples of one prompt split
        fast = HFEngine(model, tok, max_batch_size=cap, stop_token_ids=stops)
        with record_forward_shapes(model) as shapes:
            got = fast.generate(prompts, GREEDY, n=3, then=then)
        assert [[chain(g) for g in row] for row in got] == [[chain(g) for g in row] for row in expected], cap
        assert max(b for b, _ in shapes) <= cap
        # Only prefills of the original prompts are long; continuations feed at most pending token + 3-token suffix.
        long_calls = [(b, q) for b, q in shapes if q > 4]
        prefilled = sum(b for b, _ in long_calls)
        if cap >= 3:
            assert prefilled == len(prompts), (cap, long_calls)  # each prompt prefilled once
        else:  # again only when every row that held it has left before its last sample starts
            assert len(prompts) <= prefilled <= 2 * len(prompts), (cap, long_calls)
        if cap == 64:  # each prompt prefilled once (in length buckets), its cache copied to the 3 rows
            assert sorted(q for _, q in long_calls)[-1] == max(map(len, prompts))

    # The scenario must really contain what it claims to test.
    gens = [g for row in expected for g in row]
    depth1 = [g.next for g in gens if g.next is not None]
    assert {g.finish_reason for g in gens} == {"stop", "length"}
    assert {g.finish_reason for g in depth1} == {"stop", "length"}
    assert any(g.next is None for g in gens) and any(g.next is not None for g in depth1)
    assert any(g.next.next is not None for g in gens if g.next is not None)
    assert len({len(g.prompt_ids) for g in depth1}) > 3  # rows of different real lengths continue together


def _wide_then(i: int, j: int, depth: int, gen: Generation) -> Continuation | None:
    """Retries whose budgets range from 1 to 40 tokens, some with an empty suffix, one turn deep."""
    if depth > 0:
        return None
    suffix = [40 + k for k in range((i + j) % 3)]
    return Continuation(SamplingParams(max_new_tokens=1 + (7 * i + 13 * j) % 40, temperature=0.0), suffix_ids=suffix)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("cap", [64, 7, 3, 1])
def test_early_stopping_rows_and_refilled_slots(model, tok, stops, cap, shared):
    """Rows stop after 1 to 40 tokens; freed slots are refilled from the queue; outputs equal the plain path.

    The check that finished rows leave the computation: every row fed to a one-token
    decode forward is a token some row really sampled, so the decode rows fed add up
    to at most the tokens generated (the old micro-batch loop fed finished rows padding).
    """
    texts = [f"{t} {k}" for k in range(3) for t in TEXTS]  # 12 prompts of different lengths
    prompts_ = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    first = SamplingParams(max_new_tokens=30, temperature=0.0)
    few_stops = stops[::4]  # rarer stops: some rows run to their limit, others stop early
    reference = HFEngine(model, tok, share_prefix=False, reuse_cache=False, stop_token_ids=few_stops)
    expected = reference.generate(prompts_, first, n=3, then=_wide_then)
    fast = HFEngine(model, tok, max_batch_size=cap, stop_token_ids=few_stops, shared_prefix_attention=shared)
    with record_forward_shapes(model) as shapes:
        got = fast.generate(prompts_, first, n=3, then=_wide_then)
    assert [[chain(g) for g in row] for row in got] == [[chain(g) for g in row] for row in expected]

    gens = [g for row in expected for g in row]
    lengths = [len(g.token_ids) for g in gens] + [len(g.next.token_ids) for g in gens]
    assert min(lengths) <= 2 and max(lengths) >= 25  # really very different lengths
    assert {g.finish_reason for g in gens} == {"stop", "length"}
    decode_rows = sum(b for b, q in shapes if q == 1)
    assert decode_rows <= sum(lengths)
    assert max(b for b, _ in shapes) <= cap
    if cap == 7:  # 36 rows through 7 slots: decode forwards stay nearly full while rows wait
        full = [b for b, q in shapes if q == 1]
        assert sum(full) / (len(full) * cap) > 0.7


def test_finished_rows_cost_nothing_check_fails_on_micro_batches(model, tok, stops, monkeypatch):
    """The decode-rows bound above is a real check: the micro-batch path (no slots) breaks it."""
    import r3rl.engine.hf as hf_module

    monkeypatch.setattr(hf_module, "supports_slots", lambda model: False)
    texts = [f"{t} {k}" for k in range(3) for t in TEXTS]
    prompts_ = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    engine = HFEngine(model, tok, max_batch_size=7, stop_token_ids=stops[::4])
    with record_forward_shapes(model) as shapes:
        got = engine.generate(prompts_, SamplingParams(max_new_tokens=30, temperature=0.0), n=3, then=_wide_then)
    lengths = [len(g.token_ids) + len(g.next.token_ids) for row in got for g in row]
    assert sum(b for b, q in shapes if q == 1) > sum(lengths)


def test_llama_architecture_on_slots(tok, prompts, stops):
    llama = _spread_weights(tiny.build_model(tok, layers=2, arch="llama"), seed=1)
    reference = HFEngine(llama, tok, share_prefix=False, reuse_cache=False, stop_token_ids=stops)
    fast = HFEngine(llama, tok, max_batch_size=4, stop_token_ids=stops)
    then = scripted_then()
    a = fast.generate(prompts, GREEDY, n=3, then=then)
    b = reference.generate(prompts, GREEDY, n=3, then=then)
    assert [[chain(g) for g in row] for row in a] == [[chain(g) for g in row] for row in b]
    assert llama.config._attn_implementation != "r3rl_slots"  # switched back after the call


def test_continuation_prompt_ids_and_suffix_mixed(model, tok, prompts, stops):
    def then(i, j, depth, gen):
        if depth > 0:
            return None
        params = SamplingParams(max_new_tokens=6, temperature=0.0)
        if j == 0:  # same fresh prompt for every j==0 row: prefilled once with share_prefix
            return Continuation(params, prompt_ids=prompts[(i + 1) % len(prompts)])
        return Continuation(params, suffix_ids=[41, 42][: j])

    ref = HFEngine(model, tok, share_prefix=False, reuse_cache=False, stop_token_ids=stops)
    fast = HFEngine(model, tok, stop_token_ids=stops)
    a = fast.generate(prompts, GREEDY, n=3, then=then)
    b = ref.generate(prompts, GREEDY, n=3, then=then)
    assert [[chain(g) for g in row] for row in a] == [[chain(g) for g in row] for row in b]
    assert a[0][0].next.prompt_ids == prompts[1]
    assert a[0][2].next.prompt_ids == prompts[0] + a[0][2].token_ids + [41, 42]


def test_plain_path_equals_transformers_generate(model, tok, prompts):
    """Left-padded batch, default stop set (EOS made frequent so some rows stop early)."""
    eos = tok.eos_token_id
    with torch.no_grad():
        saved = model.model.embed_tokens.weight[eos].clone()
        model.model.embed_tokens.weight[eos] *= 2.5  # tied: raises the EOS logit
    try:
        engine = HFEngine(model, tok, share_prefix=False, reuse_cache=False)
        stop = engine.stop_token_ids()
        got = [g[0] for g in engine.generate(prompts, SamplingParams(max_new_tokens=15, temperature=0.0))]
        batch = tok.pad([{"input_ids": p} for p in prompts], return_tensors="pt", padding_side="left")
        out = model.generate(**batch, do_sample=False, max_new_tokens=15, eos_token_id=stop,
                             pad_token_id=tok.pad_token_id)
    finally:
        with torch.no_grad():
            model.model.embed_tokens.weight[eos] = saved
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    for g, ref in zip(got, new):
        cut = next((k + 1 for k, t in enumerate(ref) if t in stop), len(ref))
        assert g.token_ids == ref[:cut]
    assert {g.finish_reason for g in got} == {"stop", "length"}


def test_logprobs_match_full_forward(model, tok, prompts, stops):
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, top_k=50, seed=3)
    engine = HFEngine(model, tok, stop_token_ids=stops)
    out = engine.generate(prompts, params, n=2, then=scripted_then(max_depth=1))
    checked = 0
    for row in out:
        for gen in row:
            while gen is not None:
                if gen.token_ids:
                    ids = torch.tensor([gen.prompt_ids + gen.token_ids])  # [1, P + T]
                    with torch.no_grad():
                        logits = model(ids).logits[0, len(gen.prompt_ids) - 1: -1]  # [T, V]
                    expected = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(gen.prompt_ids):, None])
                    assert torch.allclose(torch.tensor(gen.logprobs), expected[:, 0], atol=1e-4)
                    checked += 1
                gen = gen.next
    assert checked > len(prompts) * 2


def test_seeded_sampling_is_reproducible(model, tok, prompts, stops):
    engine = HFEngine(model, tok, max_batch_size=4, stop_token_ids=stops)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    a = engine.generate(prompts, params, n=3, then=scripted_then(1))
    b = engine.generate(prompts, params, n=3, then=scripted_then(1))
    c = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=12), n=3,
                        then=scripted_then(1))
    flat = lambda res: [chain(g) for row in res for g in row]  # noqa: E731
    assert flat(a) == flat(b)
    assert flat(a) != flat(c)
    assert len({tuple(g.token_ids) for g in a[0]}) > 1  # the n samples of one prompt differ


def test_train_mode_restored_and_wrappers(model, tok, prompts, stops):
    expected = HFEngine(model, tok, stop_token_ids=stops).generate(prompts, GREEDY, n=2)
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back exactly
    try:
        wrapped = torch.nn.DataParallel(model)  # stands in for DDP: generation must use .module
        got = HFEngine(wrapped, tok, stop_token_ids=stops).generate(prompts, GREEDY, n=2)
        assert model.training and model.model.layers[1].training and not model.model.layers[0].training
    finally:
        model.eval()
    assert [[chain(g) for g in r] for r in got] == [[chain(g) for g in r] for r in expected]
    engine = HFEngine(model, tok, stop_token_ids=stops)
    assert all(g.text == engine.decode_generated([g.token_ids])[0] for r in got for g in r)


def test_decoded_text_keeps_special_tool_tags_and_drops_control_tokens(model, tok):
    # The demo tokenizer marks <tool_call> special, as some chat tokenizers do: skip_special_tokens
    # would glue a two-call answer into "{...}\n{...}" and the verifier would reject it.
    engine = HFEngine(model, tok)
    answer = '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<tool_call>") in ids
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert engine.decode_generated([ids + [end]]) == [answer]
    assert tok.decode(ids, skip_special_tokens=True) != answer  # what the old decode lost


def test_then_errors(model, tok, prompts):
    engine = HFEngine(model, tok)
    with pytest.raises(ValueError, match="exactly one"):
        engine.generate(prompts[:1], GREEDY, then=lambda *a: Continuation(GREEDY))
    with pytest.raises(TypeError):
        engine.generate(prompts[:1], GREEDY, then=lambda *a: [1, 2])
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(prompts[:1], SamplingParams(top_p=0.0))


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))  # [2, 4]
    kept = filter_logits(logits, top_k=torch.tensor([2, 0]), top_p=torch.tensor([1.0, 0.6])).isfinite()
    # row 0: top-2 -> tokens 0, 1. Row 1: 0.4 + 0.3 >= 0.6 -> tokens 3, 2 (0.4 alone is < 0.6).
    assert kept.tolist() == [[True, True, False, False], [False, False, True, True]]
    greedy = RowSampling(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    tokens, logprobs = sample_next(logits, greedy, None)
    assert tokens.tolist() == [0, 3]
    assert torch.allclose(logprobs, torch.log(torch.tensor([0.5, 0.4])))


def test_sampler_draws_each_token_with_its_probability():
    """40,000 draws per row: frequencies match the tempered, filtered distribution; filtered tokens never come."""
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]])
    logits = torch.log(probs)  # [2, 6]; -inf where the probability is 0
    draws = 40_000
    rows = logits.repeat_interleave(draws, dim=0)  # [2 x draws, 6]
    n = rows.shape[0]
    sampling = RowSampling(torch.tensor([1.0] * draws + [0.5] * draws), torch.ones(n),
                           torch.tensor([0] * draws + [2] * draws))
    tokens, _ = sample_next(rows, sampling, torch.Generator().manual_seed(0))
    expected = [probs[0], torch.tensor([0.0, 0.0, 0.36, 0.64, 0.0, 0.0])]  # row 1: T = 0.5 -> p^2, then top-2
    for r in range(2):
        freq = torch.bincount(tokens[r * draws:(r + 1) * draws], minlength=6).float() / draws
        se = (expected[r] * (1 - expected[r]) / draws).sqrt()
        assert ((freq - expected[r]).abs() <= 5 * se + 1e-9).all(), (r, freq, expected[r])


# ---------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, tok):
    folder = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_load_engine_from_folder(saved, model, prompts):
    """load_engine is build_engine over a folder: the generation section's settings reach the engine."""
    engine = load_engine(str(saved), generation=GenerationConfig(max_batch_size=3, shared_prefix_attention="off"),
                         device="cpu")
    assert isinstance(engine, HFEngine) and engine.max_batch_size == 3 and engine.shared_prefix_attention is False
    assert engine.tokenizer.padding_side == "left" and engine.tokenizer.pad_token is not None
    assert next(engine.model.parameters()).dtype == torch.float32
    assert not engine.model.training
    got = engine.generate(prompts, GREEDY, n=1)
    # the loaded tokenizer's stop set: a saved demo tokenizer reloads as Qwen2Tokenizer, whose unk is <|endoftext|>
    expected = HFEngine(model, engine.tokenizer).generate(prompts, GREEDY, n=1)
    assert [chain(r[0]) for r in got] == [chain(r[0]) for r in expected]


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_model(str(tmp_path))


def test_load_lora_adapter_folder(tmp_path, saved, prompts):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(saved)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # lora_B starts at zero: perturb it so the adapter has an effect
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(saved)

    engine = load_engine(str(adapter_dir), device="cpu")
    assert type(engine.model).__name__.startswith("PeftModel")
    with_adapter = [chain(r[0]) for r in engine.generate(prompts, GREEDY)]
    in_memory = [chain(r[0]) for r in HFEngine(peft_model.eval(), engine.tokenizer).generate(prompts, GREEDY)]
    base_engine = load_engine(str(saved), device="cpu")
    without = [chain(r[0]) for r in base_engine.generate(prompts, GREEDY)]
    assert with_adapter == in_memory
    assert with_adapter != without
