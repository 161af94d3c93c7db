"""Continuous batching over decode slots: finished rows leave, waiting rows take their place.

A generate call's rows (every prompt x sample) wait in a queue. Up to `max_batch_size`
of them live in slots of one `SlotCache` (r3rl/engine/slots.py). Each iteration:

1. admit: free slots take waiting rows; a prompt is prefilled once per call: rows of
   it admitted later copy the first columns of a live row that started from it, and
   the prompt's next-token logits kept while rows of it still wait (shared prefill);
2. feed: every row with tokens not yet in its cache (a new prompt, or a finished
   row's last token plus its continuation suffix) gets them in chunk forwards,
   rows of similar chunk length together so padding stays small;
3. sample one token for every live row;
4. finish: a row that hit a stop token or its max_new_tokens is recorded and `then`
   is asked at once. A suffix continuation stays in its slot (its cache is kept; the
   suffix is fed in the next step 2); a `prompt_ids` continuation goes back to the
   front of the queue; otherwise the slot is freed. Freed slots are filled by moving
   the last live rows into them (swap-remove: one row's cache copied per hole);
5. decode: one forward feeds the sampled token of every row still generating.

A row's cache holds only its own tokens from column 0, so its position ids are its
column numbers, and what it computes does not depend on which rows share its batch:
greedy outputs equal those of the plain path (tests/test_engine.py).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from r3rl.engine.base import Continuation, ThenFn
from r3rl.engine.sampling import RowSampling, sample_next, validate_params
from r3rl.engine.slots import SlotCache, Step, model_cache
from r3rl.types import Generation, SamplingParams

# A chunk forward pads every row to the longest chunk of its group; a group grows while
# its padded size stays within this factor of its real tokens.
PAD_SLACK = 1.25


@dataclass
class Row:
    """One sequence to generate: which result slot it fills and where it hangs."""

    prompt_index: int
    sample_index: int
    depth: int
    prompt_ids: list[int]  # [P] the full prompt of this generation
    params: SamplingParams
    parent: Generation | None = None  # the generation this row continues (None at depth 0)


@dataclass
class Call:
    """What stays fixed during one generate() call."""

    module: torch.nn.Module  # unwrapped model to call
    device: torch.device
    generator: torch.Generator | None
    stop: torch.Tensor  # [S] stop token ids
    then: ThenFn | None
    results: list[list[Generation | None]]
    forward_kwargs: dict[str, Any]


def check_continuation(cont: Any) -> tuple[list[int], list[int] | None]:
    """Validate what then() returned; returns (suffix_ids or [], prompt_ids or None)."""
    if not isinstance(cont, Continuation):
        raise TypeError(f"then() must return a Continuation or None, got {type(cont).__name__}")
    if (cont.suffix_ids is None) == (cont.prompt_ids is None):
        raise ValueError("a Continuation needs exactly one of suffix_ids and prompt_ids")
    validate_params(cont.params)
    if cont.prompt_ids is not None:
        if len(cont.prompt_ids) == 0:
            raise ValueError("Continuation.prompt_ids is empty")
        return [], [int(t) for t in cont.prompt_ids]
    return [int(t) for t in cont.suffix_ids], None


@dataclass(eq=False)
class _Live:
    """A row in a slot. Its slot is its index in SlotScheduler.live."""

    row: Row
    length: int = 0  # cache columns filled (= tokens fed = next position id)
    chunk: list[int] = field(default_factory=list)  # tokens to feed before the next sample
    origin: tuple[int, ...] = ()  # the prompt its cache starts with (prefilled from scratch)
    source: "_Live | None" = None  # shared prefill: copy this row's first len(origin) columns once it is fed
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class SlotScheduler:
    """Runs one generate call's rows through at most `slots` decode slots (see module docstring)."""

    def __init__(self, engine: Any, call: Call, slots: int, capacity: int, dtype: torch.dtype):
        self.engine = engine
        self.call = call
        self.cache: SlotCache = model_cache(_config_model(call.module), slots, capacity, dtype, call.device)
        self.slots = slots
        self.live: list[_Live] = []
        self.queue: deque[Row] = deque()
        self.logits: torch.Tensor | None = None  # [slots, V] next-token logits of each slot
        self.stop_set = set(call.stop.tolist())
        self.waiting: Counter[tuple[int, ...]] = Counter()  # queued rows per prompt
        self.prompt_logits: dict[tuple[int, ...], torch.Tensor] = {}  # [V] after a prompt still waited for
        self.forwards = 0

    # ------------------------------------------------------------------ loop

    def run(self, rows: list[Row]) -> None:
        self.queue.extend(rows)
        self.waiting.update(tuple(r.prompt_ids) for r in rows)
        while self.queue or self.live:
            self._admit()
            self._feed_chunks()
            finished = self._sample()
            self._finish(finished)
            self._feed_decode()

    def _admit(self) -> None:
        """Fill free slots. A prompt already in some live row's cache (same call) is copied, not prefilled."""
        first = {lv.origin: lv for lv in self.live if lv.origin in self.prompt_logits}
        while self.queue and len(self.live) < self.slots:
            row = self.queue.popleft()
            key = tuple(row.prompt_ids)
            self.waiting[key] -= 1
            live = _Live(row, origin=key)
            if key in first:
                live.source = first[key]
            else:
                live.chunk = list(row.prompt_ids)
                first[key] = live
            self.live.append(live)

    def _feed_chunks(self) -> None:
        todo = [s for s, lv in enumerate(self.live) if lv.chunk]
        todo.sort(key=lambda s: len(self.live[s].chunk))
        group: list[int] = []
        real = 0
        for s in todo:
            n = len(self.live[s].chunk)
            if group and n * (len(group) + 1) > PAD_SLACK * (real + n):
                self._forward(group, decode=False)
                group, real = [], 0
            group.append(s)
            real += n
        if group:
            self._forward(group, decode=False)
        for s in todo:
            lv = self.live[s]
            if lv.length == len(lv.origin) and self.waiting[lv.origin] > 0:  # a fresh prefill, wanted again
                self.prompt_logits[lv.origin] = self.logits[s].clone()  # [V]
        slot_of = {id(lv): s for s, lv in enumerate(self.live)}
        for s, lv in enumerate(self.live):
            if lv.source is not None:
                length = len(lv.origin)
                src = slot_of[id(lv.source)]
                self.cache.copy_slot(src, s, length)
                fresh = lv.source.length == length  # fed this step: its logits are still the prompt's
                self.logits[s] = self.logits[src] if fresh else self.prompt_logits[lv.origin]
                lv.length, lv.source = length, None
        for key in [k for k in self.prompt_logits if self.waiting[k] <= 0]:
            del self.prompt_logits[key]

    def _feed_decode(self) -> None:
        todo = [s for s, lv in enumerate(self.live) if len(lv.chunk) == 1 and lv.source is None]
        if todo:
            self._forward(todo, decode=True)

    def _sample(self) -> list[int]:
        """One token for every live row; returns the slots whose generation is finished."""
        if not self.live:
            return []
        count = len(self.live)
        sampling = RowSampling.from_params([lv.row.params for lv in self.live], self.call.device)
        tokens, logprobs = sample_next(self.logits[:count], sampling, self.call.generator)  # [A], [A]
        finished = []
        for s, (lv, t, lp) in enumerate(zip(self.live, tokens.tolist(), logprobs.float().tolist())):
            limit = lv.row.params.max_new_tokens
            if limit <= 0:  # nothing to generate: finished before sampling
                finished.append(s)
                continue
            lv.tokens.append(t)
            lv.logprobs.append(lp)
            lv.chunk = [t]
            if t in self.stop_set or len(lv.tokens) >= limit:
                finished.append(s)
        return finished

    def _finish(self, finished: list[int]) -> None:
        if not finished:
            return
        texts = self.engine.decode_generated([self.live[s].tokens for s in finished])
        freed: list[int] = []
        scratch: list[Row] = []
        for s, text in zip(finished, texts):
            lv = self.live[s]
            row = lv.row
            reason = "stop" if lv.tokens and lv.tokens[-1] in self.stop_set else "length"
            gen = Generation(prompt_ids=row.prompt_ids, token_ids=lv.tokens, text=text,
                             logprobs=lv.logprobs, finish_reason=reason)
            if row.parent is None:
                self.call.results[row.prompt_index][row.sample_index] = gen
            else:
                row.parent.next = gen
            cont = None if self.call.then is None else self.call.then(row.prompt_index, row.sample_index,
                                                                         row.depth, gen)
            if cont is None:
                freed.append(s)
                continue
            suffix, prompt = check_continuation(cont)
            if prompt is not None:
                scratch.append(Row(row.prompt_index, row.sample_index, row.depth + 1, prompt, cont.params, gen))
                freed.append(s)
                continue
            # Stays in its slot: the unfed last token (if any) and the suffix are fed next.
            unfed = lv.chunk if lv.tokens else []
            lv.row = Row(row.prompt_index, row.sample_index, row.depth + 1,
                         row.prompt_ids + gen.token_ids + suffix, cont.params, gen)
            lv.chunk = unfed + suffix
            lv.tokens, lv.logprobs = [], []
        self.queue.extendleft(reversed(scratch))
        self.waiting.update(tuple(r.prompt_ids) for r in scratch)
        self._release(freed)

    def _release(self, freed: list[int]) -> None:
        """Free slots; the last live rows move into the holes so live slots stay [0, count)."""
        gone = set(freed)
        for hole in sorted(freed):
            while self.live and len(self.live) - 1 in gone:
                gone.discard(len(self.live) - 1)
                self.live.pop()
            if hole >= len(self.live):
                break
            last = len(self.live) - 1
            lv = self.live.pop()
            self.cache.copy_slot(last, hole, lv.length)
            self.logits[hole] = self.logits[last]
            self.live[hole] = lv
            gone.discard(hole)

    # --------------------------------------------------------------- forward

    def _forward(self, slots: list[int], decode: bool) -> None:
        """Feed each slot's chunk (left-padded to the longest) and store its next-token logits."""
        call = self.call
        chunks = [self.live[s].chunk for s in slots]
        lengths = torch.tensor([self.live[s].length for s in slots], dtype=torch.long)  # [B]
        width = max(len(c) for c in chunks)
        real = torch.tensor([len(c) for c in chunks], dtype=torch.long)  # [B]
        pad = width - real  # [B]
        j = torch.arange(width)[None, :]  # [1, S]
        # Real tokens at columns length..length+real-1, padding just past them (masked, overwritten later).
        cols = torch.where(j >= pad[:, None], lengths[:, None] + j - pad[:, None],
                           lengths[:, None] + real[:, None] + j)  # [B, S]
        ids = torch.full((len(slots), width), self.engine.pad_token_id, dtype=torch.long)  # [B, S]
        for b, c in enumerate(chunks):
            ids[b, width - len(c):] = torch.tensor(c, dtype=torch.long)
        kv_len = int(cols.max()) + 1
        self.cache.ensure(kv_len)
        rows = torch.tensor(slots, dtype=torch.long)  # [B]
        key_cols = torch.arange(kv_len)  # [K]
        active = len(self.live)
        if decode:
            mask = torch.zeros(active, 1, 1, kv_len, dtype=torch.bool)  # [A, 1, 1, K]
            mask[:, :, :, 0] = True  # rows not fed here: any finite attention, discarded
            mask[rows] = (key_cols[None, :] <= cols)[:, None, None, :]  # [B, 1, 1, K]
        else:
            mask = (key_cols[None, None, :] <= cols[:, :, None])[:, None]  # [B, 1, S, K]
        dev = call.device
        step = Step(rows=rows.to(dev), cols=cols.to(dev), mask=mask.to(dev), kv_len=kv_len, active=active,
                    decode=decode)
        self.cache.step = step
        out = call.module(input_ids=ids.to(dev), position_ids=cols.to(dev), past_key_values=self.cache,
                          use_cache=False, r3rl_step=step, **call.forward_kwargs)
        self.cache.step = None
        self.forwards += 1
        logits = out.logits[:, -1, :]  # [B, V]; right-aligned, so the last column is a real token
        if self.logits is None:
            self.logits = logits.new_empty(self.slots, logits.shape[-1])  # [slots, V]
        self.logits[rows.to(dev)] = logits
        for s, c in zip(slots, chunks):
            self.live[s].length += len(c)
            self.live[s].chunk = []


def _config_model(module: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module
