"""A preallocated per-slot KV cache and the attention function that reads it.

Each decode slot owns one row of a per-layer buffer K, V: [slots, kv_heads, capacity, head_dim].
A slot's tokens sit contiguously from column 0, so a row never carries padding in its
cache and its position ids are simply its column numbers. A forward call writes its new
keys and values straight into the slots' columns (no `torch.cat` of the whole cache per
step, unlike `DynamicCache`); the buffer grows, rarely, by at least half its length.

How it plugs into a transformers model without touching its code: the attention layers
of Llama/Qwen-style models call `past_key_values.update(k, v, layer_idx)` and then the
function registered under `config._attn_implementation`, forwarding the model call's
extra keyword arguments. `SlotCache` is that `past_key_values`; the keyword `r3rl_step`
carries a `Step` (which slots, which columns) to `slot_attention`, registered with
transformers' `AttentionInterface` and switched on only for the duration of a generate
call (`slot_attention_enabled`). A custom attention name has no mask function, so
transformers builds no mask: the `Step` is the mask.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_NAME = "r3rl_slots"
SUPPORTED_MODEL_TYPES = {"qwen2", "qwen3", "llama", "mistral"}


@dataclass
class Step:
    """One forward call over some slots.

    rows: [B] slot of each batch row. cols: [B, S] cache column each fed token goes to
    (padding goes to a column past the row's real end, where it is masked and later
    overwritten). mask: [B, 1, S, K] True where a query may attend, over columns [0, K).
    decode: S == 1 and the attention runs over the contiguous slots [0, active), the
    queries scattered into it, so the cache is read in place, never gathered.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    mask: torch.Tensor
    kv_len: int
    active: int
    decode: bool


class SlotCache:
    """Per-layer K, V buffers [slots, kv_heads, capacity, head_dim]; lengths are kept by the scheduler."""

    is_compileable = False

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.step: Step | None = None

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys)

    def ensure(self, columns: int) -> None:
        """Room for `columns` columns per slot; grows by at least half so that growth stays rare."""
        if columns <= self.capacity:
            return
        new = max(columns, self.capacity * 3 // 2)
        new = -(-new // 64) * 64
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = old.new_zeros(old.shape[0], old.shape[1], new, old.shape[3])  # [slots, H, new, D]
                grown[:, :, : old.shape[2]] = old
                store[i] = grown

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Slot dst gets slot src's first `length` columns (fan-out of a shared prefill, compaction)."""
        for store in (self.keys, self.values):
            for t in store:
                t[dst, :, :length] = t[src, :, :length]

    # What a transformers attention layer calls.
    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the new [B, H, S, D] keys/values into their slot columns; return what attention reads."""
        step = self.step
        k_store, v_store = self.keys[layer_idx], self.values[layer_idx]
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
    if step.decode:
        out = _decode_attention(query, key, value, step, scaling)  # [B, Hq, 1, D]
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=step.mask, scale=scaling,
                                             enable_gqa=query.shape[1] != key.shape[1])  # [B, Hq, S, D]
    return out.transpose(1, 2).to(out_dtype).contiguous(), None


def _decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, step: Step,
                      scaling: float | None) -> torch.Tensor:
    """One query per row against the cache where it lies: [A, Hkv, K, D] views, never copied.

    The fed rows' queries are placed among all active slots (the others get zeros and a
    one-column mask, their output dropped), and query heads are grouped by their kv head
    so grouped-query attention needs no repeated K/V (sdpa's math path on CPU would copy them).
    """
    active, kv_heads, kv_len, dim = key.shape
    heads = query.shape[1]
    q = query.new_zeros(active, heads, dim)  # [A, Hq, D]
    q[step.rows] = query[:, :, 0]
    q = q.view(active, kv_heads, heads // kv_heads, dim)  # [A, Hkv, rep, D]
    scale = scaling if scaling is not None else dim**-0.5
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale  # [A, Hkv, rep, K]
    scores = scores.float().masked_fill(~step.mask.view(active, 1, 1, kv_len), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # [A, Hkv, rep, K]
    out = torch.matmul(probs, value)  # [A, Hkv, rep, D]
    return out.view(active, heads, 1, dim)[step.rows]  # [B, Hq, 1, D]


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
    """Route the model's attention through `slot_attention` for the block; the old setting comes back."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def model_cache(model: torch.nn.Module, slots: int, capacity: int, dtype: torch.dtype,
                device: torch.device) -> SlotCache:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return SlotCache(c.num_hidden_layers, slots, c.num_key_value_heads, head_dim, capacity, dtype, device)
