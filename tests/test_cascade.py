"""Shared-prefix (cascade) attention: exact against plain attention, and the prefix really is stored once.

The attention-level tests compare `cascade_attention` with one softmax over the
concatenated [prefix | own] keys, for decode (queries scattered among the active slots,
some slots not fed, free entries inside the range read) and for chunks (several
queries per row, causal inside the row's own part, entries gathered). The engine-level
tests compare greedy tokens and log-probabilities with the plain path and with the
copying variant, and check that no slot ever receives a copy of a prompt's KV.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from r3rl.demo import tiny  # noqa: E402
from r3rl.engine import Continuation, HFEngine  # noqa: E402
from r3rl.engine.slots import KVStore, Prefixes, Step, cascade_attention  # noqa: E402
from r3rl.types import SamplingParams  # noqa: E402
from tests.test_engine import _spread_weights, chain  # noqa: E402

H, HKV, D = 6, 2, 8  # grouped-query attention: 3 query heads per kv head


def _reference(q, pk, pv, sk, sv, own_mask):
    """softmax over [prefix | own] keys for one row: q [Hq, S, D], pk/pv [Hkv, P, D], sk/sv [Hkv, K, D]."""
    k = torch.cat([pk, sk], dim=1).repeat_interleave(H // HKV, dim=0)  # [Hq, P + K, D]
    v = torch.cat([pv, sv], dim=1).repeat_interleave(H // HKV, dim=0)
    mask = torch.cat([torch.ones(q.shape[1], pk.shape[1], dtype=torch.bool), own_mask], dim=1)  # [S, P + K]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _prefix_store(lengths: list[int], g: torch.Generator) -> KVStore:
    store = KVStore(1, len(lengths), HKV, D, max(lengths) + 3, torch.float32, torch.device("cpu"))
    store.keys[0].normal_(generator=g)
    store.values[0].normal_(generator=g)
    return store


def _prefixes(store: KVStore, entries: list[int], lengths: list[int], decode: bool) -> Prefixes:
    """Layout as the scheduler builds it: rows grouped by entry, [0, E) in place for decode."""
    ids = list(range(max(entries) + 1)) if decode else sorted(set(entries))
    local = [ids.index(e) for e in entries]
    n = max(local.count(i) for i in range(len(ids)))
    seen = [0] * len(ids)
    place = []
    for e in local:
        place.append(e * n + seen[e])
        seen[e] += 1
    group = torch.full((len(ids) * n,), len(entries))
    group[torch.tensor(place)] = torch.arange(len(entries))
    lens = torch.tensor([max(lengths[e], 1) for e in ids])
    kv = int(lens.max())
    mask = (torch.arange(kv)[None] < lens[:, None]).view(len(ids), 1, 1, kv)
    return Prefixes(store=store, entries=None if decode else torch.tensor(ids), count=len(ids),
                    group=group.view(len(ids), n), place=torch.tensor(place), mask=mask, kv_len=kv)


def test_cascade_decode_equals_one_softmax():
    g = torch.Generator().manual_seed(0)
    lengths = [37, 0, 5, 61]  # entry 1 is free: read (inside [0, E)) but attended by nobody
    store = _prefix_store(lengths, g)
    active, own = 7, 9
    slot_entry = [0, 3, 0, 2, 3, 0, 2]
    own_len = [1, 9, 4, 2, 7, 3, 5]
    fed = torch.tensor([0, 1, 3, 4, 6])  # slots 2 and 5 are not fed this step
    sk, sv = torch.randn(active, HKV, own, D, generator=g), torch.randn(active, HKV, own, D, generator=g)
    mask = torch.zeros(active, 1, 1, own, dtype=torch.bool)
    mask[..., 0] = True
    for s in fed.tolist():
        mask[s, ..., : own_len[s]] = True
    q = torch.randn(len(fed), H, 1, D, generator=g)
    step = Step(rows=fed, cols=torch.tensor([[own_len[s] - 1] for s in fed.tolist()]), mask=mask, kv_len=own,
                active=active, decode=True, prefixes=_prefixes(store, [slot_entry[s] for s in fed.tolist()],
                                                               lengths, decode=True))
    out = cascade_attention(q, sk, sv, step, D**-0.5)  # [B, Hq, 1, D]
    for b, s in enumerate(fed.tolist()):
        e, p = slot_entry[s], lengths[slot_entry[s]]
        ref = _reference(q[b], store.keys[0][e, :, :p], store.values[0][e, :, :p], sk[s, :, : own_len[s]],
                         sv[s, :, : own_len[s]], torch.ones(1, own_len[s], dtype=torch.bool))
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_cascade_chunk_equals_one_softmax():
    g = torch.Generator().manual_seed(1)
    lengths = [12, 30, 4]
    store = _prefix_store(lengths, g)
    entries = [2, 0, 2]  # entry 1 is not among the chunk's rows: gathered entries only
    before = [3, 10, 0]  # own columns already cached
    width = 4
    real = [4, 2, 1]  # left-padded chunks
    kv = max(b + width for b in before)
    sk, sv = torch.randn(3, HKV, kv, D, generator=g), torch.randn(3, HKV, kv, D, generator=g)
    cols = torch.tensor([[b + j - (width - r) if j >= width - r else b + r + j for j in range(width)]
                         for b, r in zip(before, real)])
    mask = (torch.arange(kv)[None, None, :] <= cols[:, :, None])[:, None]  # [B, 1, S, K]
    q = torch.randn(3, H, width, D, generator=g)
    step = Step(rows=torch.arange(3), cols=cols, mask=mask, kv_len=kv, active=3, decode=False,
                prefixes=_prefixes(store, entries, lengths, decode=False))
    out = cascade_attention(q, sk, sv, step, D**-0.5)  # [B, Hq, S, D]
    for b in range(3):
        e, p = entries[b], lengths[entries[b]]
        ref = _reference(q[b], store.keys[0][e, :, :p], store.values[0][e, :, :p], sk[b], sv[b], mask[b, 0])
        real_cols = slice(width - real[b], width)  # padding queries are discarded by the engine
        torch.testing.assert_close(out[b][:, real_cols], ref[:, real_cols], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def model(tok):
    return _spread_weights(tiny.build_model(tok, layers=2), seed=2)


def _retry_then(i: int, j: int, depth: int, gen) -> Continuation | None:
    """A reflection-then-retry chain: suffixes of 0-5 tokens, retry budgets of 1 to 30 tokens."""
    if depth > 0:
        return None
    return Continuation(SamplingParams(max_new_tokens=1 + (5 * i + 11 * j) % 30, temperature=0.0),
                        suffix_ids=[40 + k for k in range((i + j) % 6)])


@pytest.mark.parametrize("cap", [64, 10, 3])
def test_shared_prefix_attention_matches_plain_path_and_never_copies_a_prompt(model, tok, cap, monkeypatch):
    long_text = "Use the numbers to create an equation that equals the target. " * 6
    prompts = [tok(f"{long_text} {k}: {'1 2 3 ' * k}", add_special_tokens=False)["input_ids"] for k in range(5)]
    stops = [t for t in range(len(tok)) if t % 23 == 5]
    first = SamplingParams(max_new_tokens=25, temperature=0.0)
    plain = HFEngine(model, tok, share_prefix=False, reuse_cache=False, stop_token_ids=stops)
    expected = plain.generate(prompts, first, n=4, then=_retry_then)

    copies: list[int] = []
    real_copy = KVStore.copy_row
    monkeypatch.setattr(KVStore, "copy_row", lambda self, s, d, n: (copies.append(n), real_copy(self, s, d, n)))
    shared = HFEngine(model, tok, max_batch_size=cap, stop_token_ids=stops, shared_prefix_attention=True)
    got = shared.generate(prompts, first, n=4, then=_retry_then)
    assert [[chain(g) for g in row] for row in got] == [[chain(g) for g in row] for row in expected]
    shortest = min(map(len, prompts))
    assert all(n < shortest for n in copies), (copies, shortest)  # slot compaction moves suffixes only
    lengths = [len(x.token_ids) for row in expected for g in row for x in (g, g.next) if x is not None]
    assert min(lengths) <= 3 and max(lengths) >= 20  # rows stop at very different lengths

    copying = HFEngine(model, tok, max_batch_size=cap, stop_token_ids=stops, shared_prefix_attention=False)
    copies.clear()
    again = copying.generate(prompts, first, n=4, then=_retry_then)
    assert [[chain(g) for g in row] for row in again] == [[chain(g) for g in row] for row in expected]
    assert max(copies) >= shortest  # the check above can fail: the copying variant does copy prompts
    for a_row, b_row in zip(got, expected):  # log-probabilities within float32 tolerance of the plain path
        for a, b in zip(a_row, b_row):
            while a is not None:
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
                a, b = a.next, b.next


def test_prefix_stored_once_per_prompt(model, tok):
    """KV memory: G = 8 rows of 5 long prompts hold one copy of each prompt, not eight."""
    prompts = [tok(("the target is 42 and the numbers are 1 2 3 " * 12) + str(k), add_special_tokens=False)
               ["input_ids"] for k in range(5)]
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    shared = HFEngine(model, tok, stop_token_ids=[], shared_prefix_attention=True)
    copying = HFEngine(model, tok, stop_token_ids=[], shared_prefix_attention=False)
    a, b = shared.generate(prompts, params, n=8), copying.generate(prompts, params, n=8)
    assert [[g.token_ids for g in r] for r in a] == [[g.token_ids for g in r] for r in b]
    assert shared.last_stats["prefix_entries"] == 5
    assert shared.last_stats["kv_bytes"] * 3 < copying.last_stats["kv_bytes"]


def test_auto_setting_and_config(model, tok):
    from r3rl.config import ConfigError, load_config
    from r3rl.engine.base import SHARED_PREFIX_MIN_TOKENS, use_shared_prefix

    long, short = [1] * SHARED_PREFIX_MIN_TOKENS, [1] * 100
    assert use_shared_prefix(None, [long, long], 8)
    assert not use_shared_prefix(None, [long, long], 1)  # G = 1: nothing to share
    assert not use_shared_prefix(None, [short, short], 8)  # short prompts: the extra attention costs more
    assert use_shared_prefix(True, [short], 1) and not use_shared_prefix(False, [long], 8)
    assert HFEngine(model, tok, shared_prefix_attention="off").shared_prefix_attention is False
    with pytest.raises(ValueError, match="shared_prefix_attention"):
        HFEngine(model, tok, shared_prefix_attention="sometimes")
    # YAML 1.1 reads an unquoted `off` as false: the config still means "off".
    assert load_config(None, ["generation.shared_prefix_attention=off"]).generation.shared_prefix_attention == "off"
    with pytest.raises(ConfigError, match="shared_prefix_attention"):
        load_config(None, ["generation.shared_prefix_attention=maybe"])


@pytest.mark.parametrize("half", ["weights", "autocast"])
def test_shared_prefix_attention_in_bfloat16(model, tok, half):
    """bf16 stores (bf16 weights) and a float32 store under bf16 autocast: runs, finite, first tokens agree."""
    import copy

    m = copy.deepcopy(model).to(torch.bfloat16) if half == "weights" else model
    prompts = [tok("the numbers are 1 2 3 and the target is " + str(k), add_special_tokens=False)["input_ids"]
               for k in range(3)]
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    outs = []
    for shared in (True, False):
        engine = HFEngine(m, tok, stop_token_ids=[], shared_prefix_attention=shared)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half == "autocast"):
            outs.append(engine.generate(prompts, params, n=4, then=_retry_then))
    for a_row, b_row in zip(*outs):
        for a, b in zip(a_row, b_row):
            assert len(a.token_ids) == 6 and all(torch.isfinite(torch.tensor(a.logprobs)))
            assert a.token_ids[0] == b.token_ids[0]  # the prompt's own logits: the same computation in both
            assert a.next is not None and all(torch.isfinite(torch.tensor(a.next.logprobs)))
