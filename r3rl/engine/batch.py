"""Continuous batching over decode slots: finished rows leave, waiting rows take their place.

A generate call's rows (every prompt x sample) wait in a queue. Up to `max_batch_size`
of them live in slots of one `SlotCache` (r3rl/engine/slots.py). Each iteration:

1. admit: free slots take waiting rows; a prompt is prefilled once per call (shared
   prefill). With shared-prefix attention (the default) the prompt's KV lives once in
   a prefix entry that all its rows attend to (r3rl/engine/slots.py, cascade
   attention) and a slot holds only what its row adds; without it, rows of a prompt
   admitted later copy the first columns of a live row that started from it. Either
   way the prompt's next-token logits are kept while rows of it still wait;
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

A row's cache holds only its own tokens from column 0 (after its prefix entry, if it
has one), so its position ids are its column numbers (plus the prefix length), and what
it computes does not depend on which rows share its batch: greedy outputs equal those of
the plain path (tests/test_engine.py).
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from r3rl.engine.base import Continuation, ThenFn
from r3rl.engine.sampling import RowSampling, sample_next, validate_params
from r3rl.engine.slots import Prefixes, SlotCache, Step, model_store
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
    length: int = 0  # slot columns filled (= tokens fed after the prefix entry)
    entry: int = -1  # shared-prefix attention: the prefix entry the row attends to
    prefix: int = 0  # tokens in that entry: the row's position ids start there
    fresh: bool = False  # admitted to an entry: takes the entry's next-token logits before its first sample
    chunk: list[int] = field(default_factory=list)  # tokens to feed before the next sample
    origin: tuple[int, ...] = ()  # the prompt its cache starts with (prefilled from scratch)
    source: "_Live | None" = None  # shared prefill: copy this row's first len(origin) columns once it is fed
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class SlotScheduler:
    """Runs one generate call's rows through at most `slots` decode slots (see module docstring).

    capacity: first guess of a slot's columns (each slot grows on demand); prompt_capacity:
    of a prefix entry's. shared_prefix: shared-prefix (cascade) attention, else copies.
    """

    def __init__(self, engine: Any, call: Call, slots: int, capacity: int, dtype: torch.dtype,
                 shared_prefix: bool = True, prompt_capacity: int = 0, prompts: int = 1):
        self.engine = engine
        self.call = call
        model = _config_model(call.module)
        self.shared = shared_prefix
        self.store = model_store(model, slots, capacity, dtype, call.device)
        self.prefix_store = (model_store(model, max(1, min(slots, prompts)), prompt_capacity, dtype, call.device)
                             if shared_prefix else None)
        self.cache = SlotCache(self.store, self.prefix_store)
        self.slots = slots
        self.live: list[_Live] = []
        self.queue: deque[Row] = deque()
        self.logits: torch.Tensor | None = None  # [slots, V] next-token logits of each slot
        self.stop_set = set(call.stop.tolist())
        self.waiting: Counter[tuple[int, ...]] = Counter()  # queued rows per prompt
        self.prompt_logits: dict[tuple[int, ...], torch.Tensor] = {}  # copies: [V] after a prompt still waited for
        # Shared-prefix entries: prompt -> entry, an entry's length (0 = free), key and next-token logits.
        self.entry_of: dict[tuple[int, ...], int] = {}
        self.entry_key: dict[int, tuple[int, ...]] = {}
        self.entry_len: list[int] = []
        self.entry_logits: dict[int, torch.Tensor] = {}
        self.to_prefill: list[int] = []
        self.free_entries: list[int] = []  # a heap: the lowest free entry is reused first
        self.forwards = 0
        self.peak_kv_bytes = 0

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
        """Fill free slots. A prompt already prefilled in this call is attended to (or copied), not prefilled."""
        if self.shared:
            while self.queue and len(self.live) < self.slots:
                row = self.queue.popleft()
                key = tuple(row.prompt_ids)
                self.waiting[key] -= 1
                entry = self.entry_of.get(key)
                if entry is None:
                    entry = self._new_entry(key)
                self.live.append(_Live(row, entry=entry, prefix=len(key), fresh=True))
            return
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

    def _new_entry(self, key: tuple[int, ...]) -> int:
        entry = heapq.heappop(self.free_entries) if self.free_entries else len(self.entry_len)
        if entry == len(self.entry_len):
            self.entry_len.append(0)
        self.prefix_store.ensure(len(key), entry + 1)
        self.entry_of[key], self.entry_key[entry] = entry, key
        self.to_prefill.append(entry)
        return entry

    def _free_unused_entries(self) -> None:
        """An entry no live row attends to and no queued row will is free for the next prompt."""
        used = {lv.entry for lv in self.live}
        for key, entry in list(self.entry_of.items()):
            if entry not in used and self.waiting[key] <= 0:
                del self.entry_of[key], self.entry_key[entry]
                self.entry_logits.pop(entry, None)
                self.entry_len[entry] = 0
                heapq.heappush(self.free_entries, entry)

    def _groups(self, items: list[Any], length: Any) -> list[list[Any]]:
        """Items sorted by chunk length, cut into groups whose padding stays within PAD_SLACK."""
        groups: list[list[Any]] = []
        group: list[Any] = []
        real = 0
        for item in sorted(items, key=length):
            n = length(item)
            if group and n * (len(group) + 1) > PAD_SLACK * (real + n):
                groups.append(group)
                group, real = [], 0
            group.append(item)
            real += n
        return groups + [group] if group else groups

    def _feed_chunks(self) -> None:
        if self.shared and self.to_prefill:
            for group in self._groups(self.to_prefill, lambda e: len(self.entry_key[e])):
                keys = [list(self.entry_key[e]) for e in group]
                logits = self._call(group, keys, [0] * len(group), [0] * len(group), "prefix", False)
                for e, key, lg in zip(group, keys, logits):
                    self.entry_logits[e], self.entry_len[e] = lg, len(key)
            self.to_prefill = []
        if self.shared:
            for s, lv in enumerate(self.live):
                if lv.fresh:
                    self.logits[s], lv.fresh = self.entry_logits[lv.entry], False
        todo = [s for s, lv in enumerate(self.live) if lv.chunk]
        for group in self._groups(todo, lambda s: len(self.live[s].chunk)):
            self._forward(group, decode=False)
        if self.shared:
            return
        for s in todo:
            lv = self.live[s]
            if lv.length == len(lv.origin) and self.waiting[lv.origin] > 0:  # a fresh prefill, wanted again
                self.prompt_logits[lv.origin] = self.logits[s].clone()  # [V]
        slot_of = {id(lv): s for s, lv in enumerate(self.live)}
        for s, lv in enumerate(self.live):
            if lv.source is not None:
                length = len(lv.origin)
                src = slot_of[id(lv.source)]
                self.store.copy_row(src, s, length)
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
        if self.shared:
            self._free_unused_entries()

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
            self.store.copy_row(last, hole, lv.length)
            self.logits[hole] = self.logits[last]
            self.live[hole] = lv
            gone.discard(hole)

    # --------------------------------------------------------------- forward

    def _forward(self, slots: list[int], decode: bool) -> None:
        """Feed each slot's chunk and store its next-token logits."""
        lives = [self.live[s] for s in slots]
        chunks = [lv.chunk for lv in lives]
        prefixes = self._prefixes(lives, decode) if self.shared else None
        logits = self._call(slots, chunks, [lv.length for lv in lives], [lv.prefix for lv in lives],
                            "slots", decode, prefixes)
        self.logits[torch.tensor(slots, device=logits.device)] = logits
        for lv, c in zip(lives, chunks):
            lv.length += len(c)
            lv.chunk = []

    def _prefixes(self, lives: list[_Live], decode: bool) -> Prefixes:
        """Group the fed rows by prefix entry. Decode reads the entries [0, E) in place, a chunk gathers its few."""
        entries = [lv.entry for lv in lives]
        if decode:
            ids = list(range(max(entries) + 1))
            local = entries
        else:
            ids = sorted(set(entries))
            index = {e: i for i, e in enumerate(ids)}
            local = [index[e] for e in entries]
        counts = [0] * len(ids)
        places = []
        for e in local:
            places.append((e, counts[e]))
            counts[e] += 1
        n = max(counts)
        place = torch.tensor([e * n + j for e, j in places], dtype=torch.long)  # [B]
        group = torch.full((len(ids) * n,), len(lives), dtype=torch.long)
        group[place] = torch.arange(len(lives))
        lengths = torch.tensor([max(self.entry_len[e], 1) for e in ids], dtype=torch.long)  # a free entry: any column
        kv_len = int(lengths.max())
        mask = (torch.arange(kv_len)[None, :] < lengths[:, None]).view(len(ids), 1, 1, kv_len)
        dev = self.call.device
        return Prefixes(store=self.prefix_store, entries=None if decode else torch.tensor(ids, device=dev),
                        count=len(ids), group=group.view(len(ids), n).to(dev), place=place.to(dev),
                        mask=mask.to(dev), kv_len=kv_len)

    def _call(self, rows_: list[int], chunks: list[list[int]], starts: list[int], offsets: list[int], store: str,
              decode: bool, prefixes: Prefixes | None = None) -> torch.Tensor:
        """One forward: each chunk (left-padded to the longest) written from its row's column `start`.

        Position ids are the columns plus `offsets` (a row's prefix length). Returns the
        next-token logits [B, V].
        """
        call = self.call
        lengths = torch.tensor(starts, dtype=torch.long)  # [B]
        width = max(len(c) for c in chunks)
        real = torch.tensor([len(c) for c in chunks], dtype=torch.long)  # [B]
        pad = width - real  # [B]
        j = torch.arange(width)[None, :]  # [1, S]
        # Real tokens at columns length..length+real-1, padding just past them (masked, overwritten later).
        cols = torch.where(j >= pad[:, None], lengths[:, None] + j - pad[:, None],
                           lengths[:, None] + real[:, None] + j)  # [B, S]
        ids = torch.full((len(rows_), width), self.engine.pad_token_id, dtype=torch.long)  # [B, S]
        for b, c in enumerate(chunks):
            ids[b, width - len(c):] = torch.tensor(c, dtype=torch.long)
        kv_len = int(cols.max()) + 1
        kv = self.prefix_store if store == "prefix" else self.store
        kv.ensure(kv_len)
        self.peak_kv_bytes = max(self.peak_kv_bytes, self.cache.nbytes())
        rows = torch.tensor(rows_, dtype=torch.long)  # [B]
        key_cols = torch.arange(kv_len)  # [K]
        active = len(self.live)
        if decode:
            mask = torch.zeros(active, 1, 1, kv_len, dtype=torch.bool)  # [A, 1, 1, K]
            mask[:, :, :, 0] = True  # rows not fed here: any finite attention, discarded
            mask[rows] = (key_cols[None, :] <= cols)[:, None, None, :]  # [B, 1, 1, K]
        else:
            mask = (key_cols[None, None, :] <= cols[:, :, None])[:, None]  # [B, 1, S, K]
        positions = cols + torch.tensor(offsets, dtype=torch.long)[:, None]  # [B, S]
        dev = call.device
        step = Step(rows=rows.to(dev), cols=cols.to(dev), mask=mask.to(dev), kv_len=kv_len, active=active,
                    decode=decode, store=store, prefixes=prefixes)
        self.cache.step = step
        out = call.module(input_ids=ids.to(dev), position_ids=positions.to(dev), past_key_values=self.cache,
                          use_cache=False, r3rl_step=step, **call.forward_kwargs)
        self.cache.step = None
        self.forwards += 1
        logits = out.logits[:, -1, :]  # [B, V]; right-aligned, so the last column is a real token
        if self.logits is None:
            self.logits = logits.new_empty(self.slots, logits.shape[-1])  # [slots, V]
        return logits


def _config_model(module: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module
