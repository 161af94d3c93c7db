"""The micro-batch path: every model the slot path does not support, and the plain reference path.

Prompts are cut into micro-batches of at most `max_batch_size` rows, each run through its
whole chain (first generations, then their continuations) before the next starts.
Identical prompts of a micro-batch are prefilled once and the transformers `DynamicCache`
fanned out (`share_prefix`); a continuation appends the row's not-yet-cached tokens plus
its suffix to that row's cache (`reuse_cache`). Rows stop at different times, so a row's
cache holds padding *in the middle*; the attention mask marks it 0 and position ids count
real tokens only (cumsum(mask) - 1). A finished row is fed padding until its micro-batch
ends (the slot path, r3rl/engine/batch.py, frees its place instead).

`share_prefix=False, reuse_cache=False` prefills every row and every continuation from
scratch: the plain path that tests compare the others with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from r3rl.engine.call import Call, Row, base_model
from r3rl.engine.sampling import RowSampling, sample_next
from r3rl.types import SamplingParams


@dataclass
class _State:
    """Rows that decode together, with their KV cache and next-token logits.

    mask has one column per cache slot (1 = real token, 0 = padding, anywhere in
    the row); n_real is the next position id of each row. pending holds tokens
    that were sampled but not yet fed to the model (the last token of a row that
    was still running when the batch stopped): a continuation feeds them first.
    """

    rows: list[Row]
    sampling: RowSampling
    cache: Any  # transformers Cache, [B, heads, L, head_dim] per layer
    mask: torch.Tensor  # [B, L] long
    n_real: torch.Tensor  # [B] long
    logits: torch.Tensor | None  # [B, V] logits of the next token (None before the first forward)
    pending: list[list[int]] = field(default_factory=list)

    def select(self, index: list[int]) -> None:
        """Keep (or repeat) rows by index, cache included."""
        if index == list(range(self.mask.shape[0])):
            return
        idx = torch.tensor(index, dtype=torch.long, device=self.mask.device)  # [B']
        self.cache.batch_select_indices(idx)
        self.mask, self.n_real, self.logits = self.mask[idx], self.n_real[idx], self.logits[idx]
        self.pending = [self.pending[i] for i in index] if self.pending else []

    def release(self) -> None:
        """Drop the tensors early, before the next prefill allocates its own."""
        self.cache = self.mask = self.n_real = self.logits = None  # type: ignore[assignment]


def micro_batches(prompt_count: int, n: int, cap: int) -> list[list[tuple[int, range]]]:
    """Group (prompt, sample range) units so that no micro-batch exceeds `cap` rows.

    A prompt's samples stay together when they fit (they share one prefill);
    if n > cap they are split and each part prefills the prompt once.
    """
    batches: list[list[tuple[int, range]]] = []
    current: list[tuple[int, range]] = []
    rows = 0
    for i in range(prompt_count):
        for start in range(0, n, cap):
            size = min(cap, n - start)
            if rows + size > cap:
                batches.append(current)
                current, rows = [], 0
            current.append((i, range(start, start + size)))
            rows += size
    if current:
        batches.append(current)
    return batches


class MicroBatchRunner:
    """Runs one generate call's rows micro-batch by micro-batch (see module docstring)."""

    def __init__(self, call: Call, max_batch_size: int, share_prefix: bool, reuse_cache: bool):
        self.call = call
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
        self.reuse_cache = reuse_cache

    def run(self, prompts: list[list[int]], params: SamplingParams, n: int) -> None:
        for units in micro_batches(len(prompts), n, self.max_batch_size):
            rows = [Row(i, j, 0, list(prompts[i]), params) for i, samples in units for j in samples]
            self._run(self._prefill(rows))

    def _forward(self, state: _State, ids: torch.Tensor, real: torch.Tensor) -> None:
        """Feed a right-aligned chunk to every row of `state` and update it in place.

        ids, real: [B, S]; real marks true tokens (False = padding). Position ids
        count real tokens only, so padding anywhere in a row changes nothing for it.
        A row with no real token in the chunk keeps its previous next-token logits.
        """
        positions = (state.n_real[:, None] + real.long().cumsum(-1) - 1).clamp_min(0)  # [B, S]
        state.mask = torch.cat([state.mask, real.long()], dim=-1)  # [B, L + S]
        # right-aligned chunks: the last column is a real token of every row that has one
        logits, state.cache = self.call.forward(state.cache, use_cache=True, input_ids=ids,
                                                attention_mask=state.mask, position_ids=positions)  # [B, V]
        has_real = real.any(dim=-1)  # [B]
        state.logits = logits if state.logits is None else torch.where(has_real[:, None], logits, state.logits)
        state.n_real = state.n_real + real.long().sum(-1)  # [B]

    def _right_aligned(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad token lists into (ids [B, S], real [B, S])."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.call.pad_token_id, dtype=torch.long)  # [B, S]
        real = torch.zeros((len(seqs), width), dtype=torch.bool)  # [B, S]
        for b, s in enumerate(seqs):
            if s:
                ids[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
                real[b, width - len(s):] = True
        return ids.to(self.call.device), real.to(self.call.device)

    def _prefill(self, rows: list[Row]) -> _State:
        """Prefill the rows' prompts from scratch; identical prompts only once when share_prefix is on."""
        call = self.call
        if self.share_prefix:
            first: dict[tuple[int, ...], int] = {}
            index = [first.setdefault(tuple(r.prompt_ids), len(first)) for r in rows]
            unique = [list(k) for k in first]
        else:
            index, unique = list(range(len(rows))), [r.prompt_ids for r in rows]
        ids, real = self._right_aligned(unique)  # [U, P]
        state = _State(
            rows=rows,
            sampling=RowSampling.from_params([r.params for r in rows], call.device),
            cache=DynamicCache(config=base_model(call.module).config),
            mask=torch.zeros(len(unique), 0, dtype=torch.long, device=call.device),  # [U, 0]
            n_real=torch.zeros(len(unique), dtype=torch.long, device=call.device),  # [U]
            logits=None,
        )
        self._forward(state, ids, real)
        repeats = len(rows) // len(unique)
        if repeats > 1 and index == [u for u in range(len(unique)) for _ in range(repeats)]:
            # The common case, n samples of each prompt: one prefill, the cache fanned out.
            state.cache.batch_repeat_interleave(repeats)
            state.mask = state.mask.repeat_interleave(repeats, dim=0)  # [B, L]
            state.n_real = state.n_real.repeat_interleave(repeats, dim=0)  # [B]
            state.logits = state.logits.repeat_interleave(repeats, dim=0)  # [B, V]
        else:
            state.select(index)
        state.pending = [[] for _ in rows]
        return state

    @staticmethod
    def _cache_reusable(state: _State) -> bool:
        """Mid-row padding is exact for full attention only: sliding windows and recurrent states would see it."""
        return not any(getattr(state.cache, "is_sliding", [])) and not any(getattr(state.cache, "is_linear", []))

    def _decode(self, state: _State) -> list[tuple[list[int], list[float]]]:
        """Sample until every row hit a stop token or its max_new_tokens; finished rows are fed padding.

        Returns (token_ids, logprobs) per row and leaves each row's last token in
        state.pending when it was sampled but never fed.
        """
        call = self.call
        max_new = torch.tensor([r.params.max_new_tokens for r in state.rows], device=call.device)  # [B]
        done = max_new <= 0  # [B]
        generated = torch.zeros_like(max_new)  # [B]
        last_active = torch.zeros_like(done)  # [B]
        pad = torch.full_like(max_new, call.pad_token_id)  # [B]
        step_tokens: list[torch.Tensor] = []
        step_logprobs: list[torch.Tensor] = []
        while not bool(done.all()):
            tokens, logprobs = sample_next(state.logits, state.sampling, call.generator)  # [B], [B]
            active = ~done  # [B] rows producing a real token this step
            tokens = torch.where(active, tokens, pad)
            step_tokens.append(tokens)
            step_logprobs.append(logprobs)
            generated = generated + active.long()
            call.tokens_generated(int(active.sum()))
            done = done | (active & torch.isin(tokens, call.stop)) | (generated >= max_new)
            last_active = active
            if bool(done.all()):
                break  # last tokens stay pending: only a continuation needs them in the cache
            self._forward(state, tokens[:, None], active[:, None])

        counts = generated.tolist()
        if step_tokens:
            token_rows = torch.stack(step_tokens, dim=1).tolist()  # [B, steps]
            logprob_rows = torch.stack(step_logprobs, dim=1).float().tolist()  # [B, steps]
        else:
            token_rows = logprob_rows = [[] for _ in state.rows]
        fed_last = [not a for a in last_active.tolist()]
        outputs = []
        for b, count in enumerate(counts):
            tokens_b = token_rows[b][:count]
            outputs.append((tokens_b, logprob_rows[b][:count]))
            state.pending[b] = [] if fed_last[b] else tokens_b[-1:]
        return outputs

    def _run(self, state: _State) -> None:
        """Decode a state, record its generations, then run their continuations, cache-reusing ones first."""
        call = self.call
        outputs = self._decode(state)
        texts = call.decode([tokens for tokens, _ in outputs])
        generations = [call.record(row, tokens, logprobs, text)
                       for row, (tokens, logprobs), text in zip(state.rows, outputs, texts)]
        if call.then is None:
            state.release()
            return

        reuse = self.reuse_cache and self._cache_reusable(state)
        kept: list[int] = []
        chunks: list[list[int]] = []
        cached_rows: list[Row] = []
        scratch_rows: list[Row] = []
        for b, (row, gen) in enumerate(zip(state.rows, generations)):
            nxt = call.continuation(row, gen)
            if nxt is None:
                continue
            child, suffix = nxt
            if suffix is not None and reuse:
                kept.append(b)
                chunks.append(state.pending[b] + suffix)  # not-yet-cached last token, then the suffix
                cached_rows.append(child)
            else:
                scratch_rows.append(child)

        if cached_rows:
            state.select(kept)
            state.rows = cached_rows
            state.sampling = RowSampling.from_params([r.params for r in cached_rows], call.device)
            if any(chunks):
                ids, real = self._right_aligned(chunks)  # [B', S]
                self._forward(state, ids, real)
            state.pending = [[] for _ in cached_rows]
            self._run(state)
        state.release()
        if scratch_rows:
            self._run(self._prefill(scratch_rows))
