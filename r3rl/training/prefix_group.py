"""Shared-prefix (Prefix Grouper) log-probs: each group's common context is computed once.

The G rows of a GRPO group repeat one failure context (task prompt, failed attempt, reflect
instruction) before their own completions. `completion_logprobs` runs the body over all of
them; here a group is packed as one sequence [P, S1, ..., Sk] (arXiv 2506.05433): the prefix P
attends causally to itself, each suffix Si to P and causally to itself, never to another
suffix, and Si's positions continue from |P| as in its own row. Every row's hidden states are
then those of its per-row forward, so the log-probs are equal up to floating-point
reassociation; the prefix's hidden states feed k consumers and autograd sums their gradients,
so the parameter gradients are equal too (tests/test_prefix_group.py checks both).

The shared part is what the rows really share: the longest common prefix of the group's
contexts (a row cut at max_prompt_tokens, or a retry row, may share less or nothing), never
reaching into a completion. A group whose rows share nothing is split into rows of their own.

The block structure reaches the model as a ready 4D attention mask, which transformers passes
through unchanged (masking_utils returns a 4D mask as-is): on CPU a dense boolean
[groups, 1, T, T] mask for sdpa (the additive float form for eager), on CUDA a FlexAttention
BlockMask (no dense [T, T] mask; needs model.attn_implementation=flex_attention). Being an
argument of the forward, it is also what checkpointed layers see when they recompute.

Tensor conventions as in `grpo.py`; in addition Bg packed sequences of Tg positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# Architectures whose attention the exactness tests cover (full attention, rotary positions
# from position_ids, a 4D mask passed through), and the attention implementations.
SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral")
CPU_ATTENTION = ("sdpa", "eager")
CUDA_ATTENTION = ("flex_attention",)


@dataclass
class PackedGroups:
    """A micro-batch laid out as one packed sequence per group.

    input_ids / position_ids / segment: [Bg, Tg]; segment is 0 on the prefix, i >= 1 on the
    i-th suffix, -1 on padding. where: [B, T, 2] long, the (packed row, packed column) of every
    real token of the original [B, T] rows (-1 on their padding). prefix_len: [Bg] shared lengths.
    """

    input_ids: Tensor
    position_ids: Tensor
    segment: Tensor
    where: Tensor
    prefix_len: list[int]

    @property
    def tokens(self) -> int:
        """Real token positions the body computes (the per-row layout: attention_mask.sum())."""
        return int((self.segment >= 0).sum())


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of token lists."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for j in range(n):
        t = first[j]
        if any(s[j] != t for s in seqs[1:]):
            return j
    return n


def pack_groups(input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor, group_ids: Tensor,
                pad_id: int = 0) -> PackedGroups:
    """Pack the rows of each group as [prefix, suffix_1, ..., suffix_k] (right-padded to Tg).

    Args:
        input_ids, attention_mask, completion_mask: [B, T], left or right padded.
        group_ids: [B] integer group of each row (rows of a group need not be adjacent).
    """
    bsz, seq_len = input_ids.shape
    ids = input_ids.tolist()
    real = attention_mask.bool().tolist()
    comp = completion_mask.bool().tolist()
    rows_tokens, rows_cols, ctx_len = [], [], []
    for i in range(bsz):
        cols = [j for j in range(seq_len) if real[i][j]]
        toks = [ids[i][j] for j in cols]
        first = next((k for k, j in enumerate(cols) if comp[i][j]), len(cols))  # real index of the first completion token
        rows_tokens.append(toks)
        rows_cols.append(cols)
        ctx_len.append(first)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        members.setdefault(int(g), []).append(i)
    packs: list[tuple[int, list[int]]] = []  # (prefix length, rows)
    for rows in members.values():
        shared = common_prefix_len([rows_tokens[i][: ctx_len[i]] for i in rows])
        if shared == 0 and len(rows) > 1:
            packs.extend((ctx_len[i], [i]) for i in rows)  # nothing shared: rows of their own
        else:
            packs.append((shared, rows))
    lengths = [p + sum(len(rows_tokens[i]) - p for i in rows) for p, rows in packs]
    tg = max(lengths)
    packed_ids = torch.full((len(packs), tg), pad_id, dtype=torch.long)
    positions = torch.zeros(len(packs), tg, dtype=torch.long)
    segment = torch.full((len(packs), tg), -1, dtype=torch.long)
    where = torch.full((bsz, seq_len, 2), -1, dtype=torch.long)
    for g, (p, rows) in enumerate(packs):
        first = rows_tokens[rows[0]]
        packed_ids[g, :p] = torch.tensor(first[:p], dtype=torch.long)
        positions[g, :p] = torch.arange(p)
        segment[g, :p] = 0
        at = p
        for k, i in enumerate(rows, start=1):
            toks, cols = rows_tokens[i], rows_cols[i]
            n = len(toks) - p
            packed_ids[g, at:at + n] = torch.tensor(toks[p:], dtype=torch.long)
            positions[g, at:at + n] = torch.arange(p, p + n)
            segment[g, at:at + n] = k
            col_idx = torch.tensor(cols, dtype=torch.long)
            where[i, col_idx, 0] = g
            where[i, col_idx[:p], 1] = torch.arange(p)
            where[i, col_idx[p:], 1] = torch.arange(at, at + n)
            at += n
    dev = input_ids.device
    return PackedGroups(packed_ids.to(dev), positions.to(dev), segment.to(dev), where.to(dev), [p for p, _ in packs])


def dense_mask(packed: PackedGroups) -> Tensor:
    """[Bg, 1, Tg, Tg] bool: True where query q may attend to key k.

    Key k is visible to query q when both are real, k is not later than q, and k lies on the
    prefix or in q's own segment. A padding query sees only itself (a row of the softmax with no
    key would be NaN, and NaN times a zero gradient is still NaN).
    """
    seg, pos = packed.segment, packed.position_ids  # [Bg, Tg]
    sq, sk = seg[:, :, None], seg[:, None, :]  # [Bg, Tg, 1], [Bg, 1, Tg]
    visible = ((sk == 0) | (sk == sq)) & (pos[:, None, :] <= pos[:, :, None]) & (sq >= 0) & (sk >= 0)  # [Bg, Tg, Tg]
    eye = torch.eye(seg.shape[1], dtype=torch.bool, device=seg.device)  # [Tg, Tg]
    return (visible | ((sq < 0) & eye))[:, None]  # [Bg, 1, Tg, Tg]


def block_mask(packed: PackedGroups) -> Any:
    """The same visibility as `dense_mask` as a FlexAttention BlockMask (CUDA: sparse blocks, no [Tg, Tg] tensor)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, pos = packed.segment, packed.position_ids

    def mask_mod(b, h, q, k):
        sq, sk = seg[b, q], seg[b, k]
        visible = ((sk == 0) | (sk == sq)) & (pos[b, k] <= pos[b, q]) & (sq >= 0) & (sk >= 0)
        return visible | ((sq < 0) & (q == k))

    bg, tg = seg.shape
    return create_block_mask(mask_mod, B=bg, H=None, Q_LEN=tg, KV_LEN=tg, device=seg.device)


def attention_mask_for(packed: PackedGroups, attn_implementation: str | None, dtype: torch.dtype) -> Any:
    """The 4D mask in the form the model's attention function takes."""
    if attn_implementation == "flex_attention":
        return block_mask(packed)
    mask = dense_mask(packed)
    if attn_implementation == "eager":  # eager adds the mask to the scores
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    return mask


def unsupported_reason(model: torch.nn.Module, device: torch.device) -> str | None:
    """Why the grouped path is not covered for this model and device, or None when it is."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(m, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"architecture {model_type} is not covered (covered: {', '.join(SUPPORTED_MODEL_TYPES)})"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
        return f"{model_type} with sliding-window layers is not covered"
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return f"{model_type} with sliding-window attention is not covered"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    allowed = CUDA_ATTENTION if device.type == "cuda" else CPU_ATTENTION
    if impl not in allowed:
        return (f"attention implementation {impl} on {device.type} is not covered "
                f"(model.attn_implementation: {' or '.join(allowed)})")
    return None


def resolve(setting: str, model: torch.nn.Module, device: torch.device, deepspeed: bool = False,
            sharded: bool = False) -> tuple[bool, str | None]:
    """train.shared_prefix -> (use the grouped path, why not). `on` with an uncovered combination raises
    InputError; `auto` falls back to the per-row path and returns the reason (the trainer logs it once)."""
    from r3rl.errors import InputError

    if setting == "off":
        return False, None
    if deepspeed:
        reason = "DeepSpeed is not covered by the exactness tests"
    elif sharded:
        reason = "sharding (FSDP2) is not covered by the exactness tests"
    else:
        reason = unsupported_reason(model, device)
    if reason is None:
        return True, None
    if setting == "on":
        raise InputError(f"train.shared_prefix=on: {reason}; use train.shared_prefix=auto or off")
    return False, reason
