"""HFEngine in bfloat16: what stays exact, what agrees within a stated tolerance, and why.

Exact (token for token): within one attention layout (shared-prefix or copies), the slot
path's greedy outputs do not depend on how rows are batched (max_batch_size 64, 5, 2),
since every row is computed from its own cache with the same kernels whatever its
neighbours.

Within a tolerance: the plain path (micro-batches, left padding, every continuation
prefilled again) and the two slot layouts round differently in bfloat16 (8 significant
bits). A greedy sequence may therefore switch to another token where two candidates are
within rounding of each other, and then continue differently. Checked: every sequence is
identical to the plain path's up to its first difference, and at that position the two
tokens are a near-tie of the float32 forward of the same (bfloat16-rounded) weights:
their logits differ by at most NEAR_TIE_ULPS bfloat16 steps at the logits' magnitude.
Measured on this model: first differences after 4, 13 and 31 tokens, at gaps of 2-4 steps.

Log-probabilities under autocast: the engine's sampling log-probs (the KV-cache path)
against the training forward (`completion_logprobs`) under the same autocast. The trainer
uses such log-probs only through a ratio clipped to 1 +- clip_eps (0.2): a per-token
difference below log(1.2) = 0.18 never moves a ratio across the clip. Bound checked: max
|difference| <= 0.1 and mean <= 0.03 (measured: max 0.045-0.061, mean 0.011).

bfloat16 weights multiplied in float32 (the default on CPUs without bfloat16 units,
r3rl/engine/half_matmul.py): one layer equals an exact float32 product of the bfloat16 values,
at most one bfloat16 step from PyTorch's own kernel; a float32 model is bit-identical in every
mode; greedy outputs agree with PyTorch's bf16 kernels up to near-ties as above, and the
sampler's log-probs meet the same bound against the training forward.

float32 stays bit-identical: the sampler's float32 results are checked against the
formula it had before the bf16 work (same tokens, same log-probs, same generator use).
"""

from __future__ import annotations

import math

import pytest
import torch

from r3rl.demo import tiny
from r3rl.engine import Continuation, HFEngine
from r3rl.engine.half_matmul import cpu_has_fast_half, cpu_matmuls, needs_float32_matmuls
from r3rl.engine.sampling import RowSampling, filter_logits, sample_next
from r3rl.training.grpo import build_completion_batch
from r3rl.training.logprobs import completion_logprobs
from r3rl.types import Generation, SamplingParams

from tests.test_engine import TEXTS, _spread_weights, chain, one_thread, scripted_then  # noqa: F401 (one_thread: autouse fixture)

NEAR_TIE_ULPS = 8
GREEDY = SamplingParams(max_new_tokens=32, temperature=0.0)



@pytest.fixture(scope="module")
def model32(tok):
    return _spread_weights(tiny.build_model(tok, layers=2))


@pytest.fixture(scope="module")
def model16(tok):
    return _spread_weights(tiny.build_model(tok, layers=2)).to(torch.bfloat16)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def stops(tok):
    return [t for t in range(len(tok)) if t % 17 == 3]


def _bf16_step(x: float) -> float:
    """The spacing of bfloat16 numbers around x (8 significant bits)."""
    return 2.0 ** (math.floor(math.log2(max(abs(x), 1e-30))) - 7)


def _near_tie_at_first_difference(ref: Generation, got: Generation, model_f32: torch.nn.Module) -> tuple[bool, str]:
    """Identical, or equal up to a position where the two tokens are a float32 near-tie."""
    a, b = ref.token_ids, got.token_ids
    d = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
    if d is None:
        return a == b, f"lengths {len(a)} vs {len(b)} with no differing token"
    with torch.no_grad():
        logits = model_f32(torch.tensor([ref.prompt_ids + a[:d]])).logits[0, -1].float()  # [V]
    gap = abs(float(logits[a[d]] - logits[b[d]]))
    limit = NEAR_TIE_ULPS * _bf16_step(float(logits.abs().max()))
    return gap <= limit, f"first difference at token {d}: float32 logit gap {gap:.4f} > {limit:.4f}"


def test_bf16_slot_path_does_not_depend_on_batching(model16, tok, prompts, stops):
    then = scripted_then()
    for shared in (True, False):
        outs = []
        for cap in (64, 5, 2):
            engine = HFEngine(model16, tok, max_batch_size=cap, stop_token_ids=stops, shared_prefix_attention=shared)
            got = engine.generate(prompts, GREEDY, n=3, then=then)
            outs.append([[chain(g) for g in row] for row in got])
        assert outs[1] == outs[0] and outs[2] == outs[0], shared


def test_bf16_greedy_agrees_with_plain_path_up_to_near_ties(model16, tok, prompts, stops):
    model_f32 = _as_float32(model16)
    reference = HFEngine(model16, tok, share_prefix=False, reuse_cache=False, stop_token_ids=stops)
    expected = [g for row in reference.generate(prompts, GREEDY, n=2) for g in row]
    identical = 0
    for shared in (True, False):
        engine = HFEngine(model16, tok, stop_token_ids=stops, shared_prefix_attention=shared)
        got = [g for row in engine.generate(prompts, GREEDY, n=2) for g in row]
        for ref, g in zip(expected, got):
            ok, why = _near_tie_at_first_difference(ref, g, model_f32)
            assert ok, (shared, why)
            identical += ref.token_ids == g.token_ids
    assert identical > 0  # not every sequence diverges: the check compares tokens, not just near-ties


def _as_float32(model16: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a bfloat16 model: the same (rounded) weights, float32 arithmetic."""
    import copy

    return copy.deepcopy(model16).float().eval()


def test_near_tie_check_rejects_a_real_divergence(model16, tok, prompts, stops):
    """The tolerance is not vacuous: a sequence whose next token is not the argmax's near-tie fails it."""
    model_f32 = _as_float32(model16)
    ref = HFEngine(model16, tok, share_prefix=False, reuse_cache=False, stop_token_ids=stops).generate(
        prompts[:1], GREEDY)[0][0]
    with torch.no_grad():
        logits = model_f32(torch.tensor([ref.prompt_ids])).logits[0, -1]
    worst = int(logits.argmin())
    fake = Generation(prompt_ids=ref.prompt_ids, token_ids=[worst] + ref.token_ids[1:], text="", logprobs=[],
                      finish_reason=ref.finish_reason)
    assert not _near_tie_at_first_difference(ref, fake, model_f32)[0]


def test_autocast_logprobs_match_the_training_forward(model32, tok, prompts, stops):
    amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=0)
    for shared in (True, False):
        engine = HFEngine(model32, tok, stop_token_ids=stops, autocast=amp, shared_prefix_attention=shared)
        out = engine.generate(prompts, params, n=3,
                              then=lambda i, j, d, g: Continuation(params, suffix_ids=[40, 41]) if d == 0 else None)
        gens = [g for row in out for g in row] + [g.next for row in out for g in row]
        gens = [g for g in gens if g.token_ids]
        ids, attn, mask = build_completion_batch([g.prompt_ids for g in gens], [g.token_ids for g in gens],
                                                 tok.pad_token_id)
        with torch.no_grad(), amp():
            train = completion_logprobs(model32, ids, attn, mask)  # [B, T]
        engine_lp = torch.zeros_like(train)
        for b, g in enumerate(gens):
            engine_lp[b, mask[b].bool().nonzero()[:, 0]] = torch.tensor(g.logprobs)
        diff = (engine_lp - train)[mask.bool()].abs()
        assert diff.numel() > 200
        assert float(diff.max()) <= 0.1 and float(diff.mean()) <= 0.03, (shared, float(diff.max()), float(diff.mean()))


def _sample_before(logits, sampling, generator):
    """sample_next as it was before the bfloat16 work (commit cad77f6): the float32 reference."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    greedy = sampling.temperature <= 0
    if not bool(greedy.all()):
        temperature = torch.where(greedy, torch.ones_like(sampling.temperature), sampling.temperature)
        scaled = filter_logits(logits / temperature[:, None], sampling.top_k, sampling.top_p)
        probs = torch.softmax(scaled, dim=-1)
        cdf = probs.cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
        drawn = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)
        tokens = torch.where(greedy, tokens, drawn)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


@pytest.mark.parametrize("temps", [[1.0] * 6, [0.0, 1.0, 1.0, 0.0, 1.0, 1.0], [0.7, 1.0, 0.0, 1.3, 1.0, 0.5],
                                   [0.0] * 6])
def test_float32_sampler_is_bit_identical_to_before(temps):
    g = torch.Generator().manual_seed(0)
    for top_k, top_p in ((0, 1.0), (50, 1.0), (0, 0.9)):
        sampling = RowSampling(torch.tensor(temps), torch.full((6,), top_p), torch.full((6,), top_k))
        for step in range(20):
            logits = torch.randn(6, 5000, generator=g) * 3
            a, b = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
            t1, lp1 = sample_next(logits, sampling, a)
            t2, lp2 = _sample_before(logits, sampling, b)
            assert torch.equal(t1, t2) and torch.equal(lp1, lp2)
            assert torch.equal(a.get_state(), b.get_state())  # the same random numbers consumed


@pytest.mark.parametrize("temps", [[1.0, 0.0, 0.7, 1.0] * 2, [1.0, 0.0, 1.0, 1.0] * 2, [0.0] * 8])
def test_bf16_logits_sample_like_their_float32_values(temps):
    """bfloat16 logits are converted once: the same tokens as their float32 values, log-probs within 1e-5.

    [1, 0, 1, 1] and all-greedy take the shortcut (log-sum-exp from the softmax), 0.7 the general path.
    """
    g = torch.Generator().manual_seed(1)
    for step in range(10):
        logits = (torch.randn(8, 3000, generator=g) * 3).to(torch.bfloat16)
        sampling = RowSampling(torch.tensor(temps), torch.ones(8), torch.zeros(8, dtype=torch.long))
        a, b = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        t1, lp1 = sample_next(logits, sampling, a)
        t2, lp2 = _sample_before(logits.float(), sampling, b)
        assert lp1.dtype == torch.float32 and torch.equal(t1, t2)
        torch.testing.assert_close(lp1, lp2, rtol=0, atol=1e-5)
        assert torch.equal(a.get_state(), b.get_state())


# --- bfloat16 weights multiplied in float32 (r3rl/engine/half_matmul.py) ------------------------
# On a CPU without bfloat16 units the engine's default (cpu_matmul="auto") multiplies bfloat16
# linear layers in float32; "float32" forces that on any CPU, so these tests check the same
# rewrite on every machine.


def test_float32_products_equal_an_exact_float32_linear_of_the_bf16_values():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(5, 64).to(torch.bfloat16)
    with torch.no_grad(), cpu_matmuls(layer, "float32"):
        got = layer(x)
    with torch.no_grad():
        want = torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float()).to(torch.bfloat16)
        native = layer(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)  # PyTorch's own bfloat16 kernel also accumulates in float32: at most one rounding step apart
    steps = (got.float() - native.float()).abs() / torch.tensor([_bf16_step(float(v)) for v in want.flatten()]).view_as(want)
    assert float(steps.max()) <= 1.0


def test_float32_products_in_slabs_equal_the_whole_product(monkeypatch):
    """A wide weight is converted and multiplied a slab of output rows at a time: same values as one product."""
    import r3rl.engine.half_matmul as hm

    monkeypatch.setattr(hm, "_MIN_SLAB_ROWS", 8)
    monkeypatch.setattr(hm, "_SLAB_BYTES", 4 * 64 * 8)  # 8 rows of K=64 per slab: 6 slabs of a [48, 64] weight
    torch.manual_seed(1)
    layer = torch.nn.Linear(64, 44).to(torch.bfloat16)  # 44 rows: the last slab is short
    x = torch.randn(2, 3, 64).to(torch.bfloat16)  # [B, S, K], as a model calls it
    with torch.no_grad():
        with cpu_matmuls(layer, "float32"):
            got = layer(x)
        want = torch.nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float()).to(torch.bfloat16)
    assert got.shape == (2, 3, 44) and torch.equal(got, want)


def test_float32_products_leave_float32_models_and_native_mode_alone(model32, model16):
    assert not needs_float32_matmuls(model32)
    assert needs_float32_matmuls(model16) == (not cpu_has_fast_half(torch.bfloat16))
    x = torch.randn(3, 64).to(torch.bfloat16)
    layer = torch.nn.Linear(64, 8).to(torch.bfloat16)
    with cpu_matmuls(layer, "native"):
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    with pytest.raises(ValueError, match="cpu_matmul"):
        HFEngine(model32, None, cpu_matmul="fast")  # checked before the tokenizer is touched


def test_engine_routes_bf16_linears_through_float32_products_per_mode(model16, tok, prompts, stops, monkeypatch):
    """The engine enters the rewrite around its forwards: every linear of a bf16 model under float32,
    none under native, and under auto exactly when this CPU lacks bfloat16 units."""
    import r3rl.engine.half_matmul as hm

    calls = []
    real = hm._float32_linear
    monkeypatch.setattr(hm, "_float32_linear", lambda x, w, b: calls.append(w.dtype) or real(x, w, b))
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    counts = {}
    for mode in ("native", "auto", "float32"):
        calls.clear()
        HFEngine(model16, tok, stop_token_ids=stops, cpu_matmul=mode).generate(prompts[:1], params)
        counts[mode] = len(calls)
    assert counts["native"] == 0 and counts["float32"] > 0 and set(calls) == {torch.bfloat16}
    assert counts["auto"] == (0 if cpu_has_fast_half(torch.bfloat16) else counts["float32"])


def test_wide_float32_layers_are_multiplied_in_slabs_with_identical_values(monkeypatch):
    import r3rl.engine.half_matmul as hm

    monkeypatch.setattr(hm, "_SLAB_BYTES", 4 * 64 * 256)  # slabs of 256 rows (the minimum) at K=64
    torch.manual_seed(2)
    wide, narrow = torch.nn.Linear(64, 1100), torch.nn.Linear(64, 1000)  # >= 4 slabs (the last short); < 4
    assert hm.has_wide_float32(wide) and not hm.has_wide_float32(narrow)
    x = torch.randn(2, 3, 64)
    seen = []
    real = hm._slabbed_linear
    monkeypatch.setattr(hm, "_slabbed_linear", lambda *a: seen.append(a[1].shape) or real(*a))
    with torch.no_grad():
        with cpu_matmuls(wide, "auto"):
            got = wide(x)
        with cpu_matmuls(wide, "native"):
            wide(x)
    assert seen == [torch.Size([1100, 64])]  # auto slabs it, native does not
    # The same dot products; BLAS may block a slab's sum differently from the whole call's, so equal up to
    # float32 summation order (bit-identical at the 0.5B shapes measured, BENCHMARKS.md)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, wide.weight, wide.bias), rtol=0, atol=1e-5)


@pytest.mark.parametrize("wide_head", [False, True])
def test_float32_model_generates_bit_identically_in_every_cpu_matmul_mode(model32, tok, prompts, stops, wide_head,
                                                                           monkeypatch):
    """With wide_head the slab size is shrunk so the test model's LM head is multiplied in slabs under
    auto and float32 (as a 150k-vocabulary head is): the tokens must not change, nor the log-probs beyond
    float32 summation order (8-row slabs of a tiny head take other BLAS kernels than one call)."""
    if wide_head:
        import r3rl.engine.half_matmul as hm

        monkeypatch.setattr(hm, "_MIN_SLAB_ROWS", 8)
        monkeypatch.setattr(hm, "_SLAB_BYTES", 4 * model32.config.hidden_size * 8)
        assert hm._wide_float32(model32.get_output_embeddings().weight)
    params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=3)
    outs = [HFEngine(model32, tok, stop_token_ids=stops, cpu_matmul=m).generate(prompts, params, n=2)
            for m in ("native", "auto", "float32")]
    flat = [[(g.token_ids, g.logprobs) for row in out for g in row] for out in outs]
    if not wide_head:
        assert flat[1] == flat[0] and flat[2] == flat[0]  # nothing rewritten: bit-identical
        return
    for other in flat[1:]:
        assert [t for t, _ in other] == [t for t, _ in flat[0]]
        gap = max((abs(a - b) for (_, la), (_, lb) in zip(other, flat[0]) for a, b in zip(la, lb)), default=0.0)
        assert gap <= 1e-5, gap


def test_bf16_weights_with_float32_products_agree_with_the_plain_path_up_to_near_ties(model16, tok, prompts, stops):
    """Greedy, float32 products (slot path, both layouts) against PyTorch's own bf16 kernels (plain path)."""
    model_f32 = _as_float32(model16)
    reference = HFEngine(model16, tok, share_prefix=False, reuse_cache=False, stop_token_ids=stops,
                         cpu_matmul="native")
    expected = [g for row in reference.generate(prompts, GREEDY, n=2) for g in row]
    identical = 0
    for shared in (True, False):
        engine = HFEngine(model16, tok, stop_token_ids=stops, shared_prefix_attention=shared, cpu_matmul="float32")
        got = [g for row in engine.generate(prompts, GREEDY, n=2) for g in row]
        for ref, g in zip(expected, got):
            ok, why = _near_tie_at_first_difference(ref, g, model_f32)
            assert ok, (shared, why)
            identical += ref.token_ids == g.token_ids
    assert identical > 0


def test_bf16_weights_with_float32_products_logprobs_match_the_training_forward(model16, tok, prompts, stops):
    """The sampler's log-probs (float32 products) against the training forward on the same bf16 model
    with PyTorch's own kernels: the same bound the trainer relies on under autocast (max 0.1, mean 0.03)."""
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=0)
    engine = HFEngine(model16, tok, stop_token_ids=stops, cpu_matmul="float32")
    gens = [g for row in engine.generate(prompts, params, n=3) for g in row if g.token_ids]
    ids, attn, mask = build_completion_batch([g.prompt_ids for g in gens], [g.token_ids for g in gens],
                                             tok.pad_token_id)
    with torch.no_grad():
        train = completion_logprobs(model16, ids, attn, mask).float()  # [B, T]
    engine_lp = torch.zeros_like(train)
    for b, g in enumerate(gens):
        engine_lp[b, mask[b].bool().nonzero()[:, 0]] = torch.tensor(g.logprobs)
    diff = (engine_lp - train)[mask.bool()].abs()
    assert diff.numel() > 100
    assert float(diff.max()) <= 0.1 and float(diff.mean()) <= 0.03, (float(diff.max()), float(diff.mean()))


def test_half_matmul_is_the_deprecated_name_of_cpu_matmul(model32, tok):
    """The engine's keyword keeps its old name for one release (the config key: tests/test_config.py)."""
    from r3rl.config import CpuMatmul

    with pytest.warns(FutureWarning, match="cpu_matmul"):
        assert HFEngine(model32, tok, half_matmul="native").cpu_matmul is CpuMatmul.NATIVE
