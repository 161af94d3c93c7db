"""A preallocated per-slot KV cache, a shared-prefix store, and the attention that reads them.

Each decode slot owns one row of a per-layer buffer K, V: [slots, kv_heads, capacity, head_dim].
A forward call writes its new keys and values straight into the rows' columns (no
`torch.cat` of the whole cache per step, unlike `DynamicCache`); a buffer grows, rarely,
by at least half its length.

Shared-prefix (cascade) attention: a prompt's KV is stored once, in a row (an "entry")
of a second store of the same shape, and a slot holds only what its row added after
the prompt (the reflection, the retry suffix, the retry). A query attends to its
entry's prefix and to its own slot separately and the two partial softmaxes are merged
exactly by their log-sum-exp (Hydragen, arXiv 2402.05099; FlashInfer's cascade
attention). The prefix part runs one matmul per entry for all the rows of its group
([rows x heads, D] x [D, prefix]): the G rows of a failure read its 1,000-token context
once per step instead of G times, and their copies are never made.

How it plugs into a transformers model without touching its code: the attention layers
of Llama/Qwen-style models call `past_key_values.update(k, v, layer_idx)` and then the
function registered under `config._attn_implementation`, forwarding the model call's
extra keyword arguments. `SlotCache` is that `past_key_values`; the keyword `r3rl_step`
carries a `Step` (which rows, which columns, which prefixes) to `slot_attention`,
registered with transformers' `AttentionInterface` when the first engine is built
(`register_slot_attention`, not at import) and switched on only for the duration of each of
the engine's own forwards (`slot_attention_enabled`). A custom attention name has no mask
function, so transformers builds no mask: the `Step` is the mask.

Why a scoped switch and not a per-call argument: transformers 5.24 has none. Each attention
layer looks its function up by `self.config._attn_implementation` on every forward (and the
model picks its mask function by the same name), and `AttentionInterface` is one global
registry; so the name is set on the model's config for one forward call and put back after
it, exceptions included. Nothing outside that forward (the verifier called from `then`, the
trainer, another model sharing the config) ever sees it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from r3rl.engine.half_matmul import cpu_has_fast_half

ATTN_NAME = "r3rl_slots"
SUPPORTED_MODEL_TYPES = {"qwen2", "qwen3", "llama", "mistral"}


@dataclass
class Prefixes:
    """The shared prefixes the fed rows of a forward attend to, laid out by group.

    entries: [E] long, the store rows read (None: the contiguous entries [0, E), read in
    place). group: [E, n] index of the fed row in each place of a group (B = a zero
    query: the place is empty). place: [B] long, e * n + j of each fed row. mask:
    [E, 1, 1, L] True on an entry's real columns.
    """

    store: "KVStore"
    entries: torch.Tensor | None
    count: int
    group: torch.Tensor
    place: torch.Tensor
    mask: torch.Tensor
    kv_len: int

    @cached_property
    def bias(self) -> torch.Tensor:
        """The mask as an additive float32 bias, made once per forward and shared by every layer."""
        return _bias(self.mask)


@dataclass
class Step:
    """One forward call over some rows of one store.

    rows: [B] row of each batch row (a slot, or a prefix entry when store == "prefix").
    cols: [B, S] store column each fed token goes to (padding goes to a column past the
    row's real end, where it is masked and later overwritten). mask: [B, 1, S, K] True
    where a query may attend, over columns [0, K). decode: S == 1 and the attention runs
    over the contiguous slots [0, active), the queries scattered into it, so the cache is
    read in place, never gathered. prefixes: the shared prefixes the rows also attend to
    (cascade attention), None when a row's cache holds its whole sequence.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    mask: torch.Tensor
    kv_len: int
    active: int
    decode: bool
    store: str = "slots"
    prefixes: Prefixes | None = None
    layer: int = 0  # set by SlotCache.update: the layer whose attention runs next

    @cached_property
    def bias(self) -> torch.Tensor:
        """The mask as an additive float32 bias, made once per forward and shared by every layer."""
        return _bias(self.mask)


class KVStore:
    """Per-layer K, V buffers [rows, kv_heads, capacity, head_dim]."""

    def __init__(self, layers: int, rows: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (rows, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def rows(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    def ensure(self, columns: int, rows: int = 0) -> None:
        """Room for `columns` columns and `rows` rows; grows by at least half so that growth stays rare."""
        if columns <= self.capacity and rows <= self.rows:
            return
        new_cols = self.capacity if columns <= self.capacity else -(-max(columns, self.capacity * 3 // 2) // 64) * 64
        new_rows = self.rows if rows <= self.rows else max(rows, self.rows * 3 // 2)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = old.new_zeros(new_rows, old.shape[1], new_cols, old.shape[3])  # [rows, H, cols, D]
                grown[: old.shape[0], :, : old.shape[2]] = old
                store[i] = grown

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Row dst gets row src's first `length` columns (fan-out of a shared prefill, compaction)."""
        for store in (self.keys, self.values):
            for t in store:
                t[dst, :, :length] = t[src, :, :length]


class SlotCache:
    """The `past_key_values` of a slot forward: the slots' store and, for cascade attention, the prefix store."""

    is_compileable = False

    def __init__(self, slots: KVStore, prefixes: KVStore | None):
        self.slots = slots
        self.prefixes = prefixes
        self.step: Step | None = None

    def nbytes(self) -> int:
        return self.slots.nbytes() + (self.prefixes.nbytes() if self.prefixes is not None else 0)

    # What a transformers attention layer calls.
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the new [B, H, S, D] keys/values into their columns; return what attention reads."""
        step = self.step
        step.layer = layer_idx
        store = self.prefixes if step.store == "prefix" else self.slots
        k_store, v_store = store.keys[layer_idx], store.values[layer_idx]
        # Under autocast the projections and the rotary embedding may emit another dtype than the store's.
        key, value = key.to(k_store.dtype), value.to(v_store.dtype)
        if step.decode:
            k_store[step.rows, :, step.cols[:, 0]] = key[:, :, 0]  # [B, H, D]
            v_store[step.rows, :, step.cols[:, 0]] = value[:, :, 0]
            return k_store[: step.active, :, : step.kv_len], v_store[: step.active, :, : step.kv_len]
        rows = step.rows[:, None]  # [B, 1]
        k_store[rows, :, step.cols] = key.transpose(1, 2)  # [B, S, H, D]
        v_store[rows, :, step.cols] = value.transpose(1, 2)
        return k_store[step.rows, :, : step.kv_len], v_store[step.rows, :, : step.kv_len]  # [B, H, K, D]


def slot_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: None, scaling: float | None = None, dropout: float = 0.0,
                   r3rl_step: Step | None = None, **kwargs):
    """Attention over the slot cache; returns ([B, S, heads, D], None) like transformers' sdpa function."""
    step = r3rl_step
    if step is None:
        raise RuntimeError("r3rl slot attention was called without its r3rl_step (a forward outside HFEngine?)")
    out_dtype = query.dtype
    query = query.to(key.dtype)  # autocast may hand a half-precision query to the float32 cache
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if step.prefixes is not None:
        out = cascade_attention(query, key, value, step, scale)  # [B, Hq, S, D]
    elif step.decode:
        out = _decode_attention(query, key, value, step, scale)  # [B, Hq, 1, D]
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=step.mask, scale=scale,
                                             enable_gqa=query.shape[1] != key.shape[1])  # [B, Hq, S, D]
    return out.transpose(1, 2).to(out_dtype).contiguous(), None


def _decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, step: Step,
                      scale: float) -> torch.Tensor:
    """One query per row against the cache where it lies: [A, Hkv, K, D] views, never copied.

    The fed rows' queries are placed among all active slots (the others get zeros and a
    one-column mask, their output dropped), and query heads are grouped by their kv head
    so grouped-query attention needs no repeated K/V (sdpa's math path on CPU would copy them).
    """
    active, kv_heads, kv_len, dim = key.shape
    heads = query.shape[1]
    work = matmul_dtype(key)
    q = query.new_zeros(active, heads, dim, dtype=work)  # [A, Hq, D]
    q[step.rows] = query[:, :, 0].to(work)
    q = q.view(active, kv_heads, heads // kv_heads, dim)  # [A, Hkv, rep, D]
    scores = torch.matmul(q * scale, key.to(work).transpose(-1, -2)).float()  # [A, Hkv, rep, K]
    scores += step.bias.view(active, 1, 1, kv_len)
    probs = torch.softmax(scores, dim=-1).to(work)  # [A, Hkv, rep, K]
    out = torch.matmul(probs, value.to(work))  # [A, Hkv, rep, D]
    return out.view(active, heads, 1, dim)[step.rows]  # [B, Hq, 1, D]


def matmul_dtype(kv: torch.Tensor) -> torch.dtype:
    """The dtype of attention's batched matmuls over a cache of this dtype.

    The cache's own dtype, except half precision on a CPU without bfloat16 units: there
    torch's bfloat16 batched matmul is emulated (measured on an AVX2-only CPU: 8x slower than
    float32 at a decode shape; the two decode matmuls of a 0.5B model took 47% of a bfloat16
    decode step), so the few
    columns read are converted to float32 first, which costs one pass over them. Float32
    caches are untouched (`.to` returns the same tensor), so float32 results do not change.
    """
    if kv.dtype == torch.float32 or kv.device.type != "cpu":
        return kv.dtype
    return kv.dtype if cpu_has_fast_half(kv.dtype) else torch.float32


def _bias(mask: torch.Tensor) -> torch.Tensor:
    """Additive form of a boolean mask (0 where allowed, -inf elsewhere): one add instead of a masked_fill."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))


def _partial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over one part of the keys and its log-sum-exp.

    q: [N, Hkv, M, D], k, v: [N, Hkv, L, D], bias: additive, broadcastable to [N, Hkv, M, L].
    Returns o [N, Hkv, M, D] (normalised over this part) and lse [N, Hkv, M] float32. The
    log-sum-exp comes from the softmax itself: its largest probability is exp(max - lse)
    >= 1/L, so lse = max - log(max probability) loses nothing, and the scores need no
    separate exp pass (an unfused exp costs more than the whole fused softmax on CPU).
    """
    work = matmul_dtype(k)
    scores = torch.matmul(q.to(work) * scale, k.to(work).transpose(-1, -2)).float()
    scores += bias
    probs = torch.softmax(scores, dim=-1)  # every query sees at least one key
    lse = scores.amax(dim=-1) - torch.log(probs.amax(dim=-1))
    return torch.matmul(probs.to(work), v.to(work)), lse


def cascade_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, step: Step,
                      scale: float) -> torch.Tensor:
    """Attention to a shared prefix (once per group) and to the row's own slot, merged by log-sum-exp.

    query: [B, Hq, S, D]. key, value: the slots' part as `SlotCache.update` returned it
    ([A, Hkv, K, D] in place for decode, [B, Hkv, K, D] gathered for a chunk). Every
    prefix column precedes every slot column, so the prefix part needs no causal mask.
    """
    pre = step.prefixes
    batch, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    m_rows = heads // kv_heads * width  # queries per kv head of one row: rep heads x S positions
    q = query.reshape(batch, kv_heads, m_rows, dim)  # heads sharing a kv head are adjacent

    # Prefix: the rows of an entry stacked into one [n x m_rows, D] query block per entry and kv head.
    kp, vp = _prefix_kv(pre, step.layer)  # [E, Hkv, L, D]
    count, n = pre.group.shape
    qz = torch.cat([q, q.new_zeros(1, kv_heads, m_rows, dim)])  # [B + 1, ...]: index B = empty place
    qg = qz[pre.group.view(-1)].view(count, n, kv_heads, m_rows, dim).transpose(1, 2)
    o1, lse1 = _partial(qg.reshape(count, kv_heads, n * m_rows, dim), kp, vp, pre.bias, scale)

    def to_rows(t: torch.Tensor) -> torch.Tensor:  # [E, Hkv, n * m_rows, ...] -> [B, Hkv, m_rows, ...]
        t = t.view(count, kv_heads, n, m_rows, *t.shape[3:]).transpose(1, 2)
        return t.reshape(count * n, kv_heads, m_rows, *t.shape[4:])[pre.place]

    o1, lse1 = to_rows(o1), to_rows(lse1)

    # The row's own columns.
    if step.decode:  # queries scattered among the active slots, whose cache is read in place
        active, kv_len = key.shape[0], key.shape[2]
        qa = q.new_zeros(active, kv_heads, m_rows, dim)
        qa[step.rows] = q
        o2, lse2 = (t[step.rows] for t in _partial(qa, key, value, step.bias.view(active, 1, 1, kv_len), scale))
    else:  # [B, 1, S, K] -> [B, 1, rep x S, K], matching the query layout
        bias = step.bias[:, :, None].expand(batch, 1, heads // kv_heads, width, key.shape[2])
        o2, lse2 = _partial(q, key, value, bias.reshape(batch, 1, m_rows, key.shape[2]), scale)

    lse = torch.logaddexp(lse1, lse2)  # [B, Hkv, m_rows]
    out = o1.float() * torch.exp(lse1 - lse)[..., None] + o2.float() * torch.exp(lse2 - lse)[..., None]
    return out.to(value.dtype).view(batch, heads, width, dim)


def _prefix_kv(pre: Prefixes, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's prefix keys and values of the step's entries: views, or a gather of a few entries."""
    out = []
    for t in (pre.store.keys[layer], pre.store.values[layer]):
        t = t[: pre.count, :, : pre.kv_len] if pre.entries is None else t[:, :, : pre.kv_len][pre.entries]
        out.append(t)
    return out[0], out[1]


def register_slot_attention() -> None:
    """Make `slot_attention` known to transformers under ATTN_NAME (once; HFEngine calls it when built)."""
    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, slot_attention)


def supports_slots(model: torch.nn.Module) -> bool:
    """Full-attention Llama/Qwen-style models whose layers go through the attention interface."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
        return False
    return getattr(config, "sliding_window", None) is None or not getattr(config, "use_sliding_window", False)


@contextmanager
def slot_attention_enabled(model: torch.nn.Module) -> Iterator[None]:
    """Route the model's attention through `slot_attention` for the block (one forward); the old setting comes
    back, also when the forward raises (module docstring: transformers has no per-call choice)."""
    register_slot_attention()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def model_store(model: torch.nn.Module, rows: int, capacity: int, dtype: torch.dtype,
                device: torch.device) -> KVStore:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return KVStore(c.num_hidden_layers, rows, c.num_key_value_heads, head_dim, capacity, dtype, device)
