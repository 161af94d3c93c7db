"""The slot path: continuous batching over decode slots, finished rows leave, waiting rows take their place.

For full-attention Llama/Qwen-style models (`supports_slots`). A generate call's rows
(every prompt x sample) wait in a queue. Up to `max_batch_size` of them live in slots of
one `SlotCache` (r3rl/engine/slots.py). Each iteration:

1. admit: free slots take waiting rows; a prompt is prefilled once per call (shared
   prefill), in one of two ways (a scheduler class each, behind one loop):
   * `SharedPrefixScheduler` (shared-prefix attention): the prompt's KV lives once in a
     prefix entry that all its rows attend to (r3rl/engine/slots.py, cascade attention)
     and a slot holds only what its row adds;
   * `CopiedPrefixScheduler`: rows of a prompt admitted later copy the first columns of
     a live row that started from it.
   Either way the prompt's next-token logits are kept while rows of it still wait;
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
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from r3rl.engine.base import use_shared_prefix
from r3rl.engine.call import Call, Row, base_model
from r3rl.engine.sampling import RowSampling, sample_next
from r3rl.engine.slots import KVStore, Prefixes, SlotCache, Step, model_store, slot_attention_enabled
from r3rl.types import SamplingParams

# A chunk forward pads every row to the longest chunk of its group; a group grows while
# its padded size stays within this factor of its real tokens.
PAD_SLACK = 1.25


def generate_slots(call: Call, prompts: list[list[int]], params: SamplingParams, n: int, max_batch_size: int,
                   shared_prefix_attention: bool | None) -> dict[str, int]:
    """Run a generate call on the slot path; returns its stats (forwards, peak KV bytes, prefix entries).

    shared_prefix_attention: True / False, or None to decide by the call's shape (`use_shared_prefix`).
    """
    rows = [Row(i, j, 0, list(p), params) for i, p in enumerate(prompts) for j in range(n)]
    model = base_model(call.module)
    dtype = model.get_input_embeddings().weight.dtype
    longest = max(len(p) for p in prompts)
    slots = min(max_batch_size, len(rows))
    scheduler: SlotScheduler
    if use_shared_prefix(shared_prefix_attention, prompts, n):
        scheduler = SharedPrefixScheduler(call, slots, params.max_new_tokens + 1, dtype,
                                          prompt_capacity=longest, prompts=len(prompts))
    else:  # a slot holds the prompt too
        scheduler = CopiedPrefixScheduler(call, slots, params.max_new_tokens + 1 + longest, dtype)
    scheduler.run(rows)
    return {"forwards": scheduler.forwards, "kv_bytes": scheduler.peak_kv_bytes,
            "prefix_entries": scheduler.prefix_entries}


@dataclass(eq=False)
class _Live:
    """A row in a slot. Its slot is its index in SlotScheduler.live."""

    row: Row
    length: int = 0  # slot columns filled (= tokens fed after the prefix entry, if any)
    prefix: int = 0  # tokens of the row's prefix entry: its position ids start there
    chunk: list[int] = field(default_factory=list)  # tokens to feed before the next sample
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


def _length_groups(items: list[Any], length: Callable[[Any], int]) -> list[list[Any]]:
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


class SlotScheduler(ABC):
    """Runs one generate call's rows through at most `slots` decode slots (see module docstring).

    The loop, the sampling, the finishing and the slot forwards are here; how a prompt
    reaches its rows (a shared prefix entry, or copies) is up to a subclass's hooks:
    `_admitted` (required), `_before_chunks`, `_after_chunks`, `_prefixes`, `_after_finish`.
    capacity: first guess of a slot's columns (each slot grows on demand).
    """

    def __init__(self, call: Call, slots: int, capacity: int, dtype: torch.dtype,
                 prefix_store: KVStore | None = None):
        self.call = call
        self.model = base_model(call.module)
        self.store = model_store(self.model, slots, capacity, dtype, call.device)
        self.stores = {"slots": self.store, "prefix": prefix_store}
        self.cache = SlotCache(self.store, prefix_store)
        self.slots = slots
        self.live: list[_Live] = []
        self.queue: deque[Row] = deque()
        self.logits: torch.Tensor | None = None  # [slots, V] next-token logits of each slot
        self.waiting: Counter[tuple[int, ...]] = Counter()  # queued rows per prompt
        self.forwards = 0
        self.peak_kv_bytes = 0

    @property
    def prefix_entries(self) -> int:
        """Prefix entries used (shared-prefix attention only)."""
        return 0

    # ------------------------------------------------------------- strategy

    @abstractmethod
    def _admitted(self, rows: list[Row]) -> list[_Live]:
        """Live rows for rows just taken from the queue (their prompt prefilled, attended to, or copied)."""

    def _before_chunks(self) -> None:
        """Runs before the chunk forwards of an iteration."""

    def _after_chunks(self, fed: list[int]) -> None:
        """Runs after the chunk forwards of an iteration; `fed`: the slots that were fed."""

    def _prefixes(self, lives: list[_Live], decode: bool) -> Prefixes | None:
        """The shared prefixes the fed rows attend to (None: a row's slot holds its whole sequence)."""
        return None

    def _after_finish(self) -> None:
        """Runs after finished rows have left their slots."""

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
        """Fill free slots from the front of the queue."""
        rows = [self.queue.popleft() for _ in range(min(self.slots - len(self.live), len(self.queue)))]
        for row in rows:
            self.waiting[tuple(row.prompt_ids)] -= 1
        self.live.extend(self._admitted(rows))

    def _feed_chunks(self) -> None:
        self._before_chunks()
        todo = [s for s, lv in enumerate(self.live) if lv.chunk]
        for group in _length_groups(todo, lambda s: len(self.live[s].chunk)):
            self._forward(group, decode=False)
        self._after_chunks(todo)

    def _feed_decode(self) -> None:
        todo = [s for s, lv in enumerate(self.live) if len(lv.chunk) == 1]
        if todo:
            self._forward(todo, decode=True)

    def _sample(self) -> list[int]:
        """One token for every live row; returns the slots whose generation is finished."""
        if not self.live:
            return []
        call = self.call
        count = len(self.live)
        sampling = RowSampling.from_params([lv.row.params for lv in self.live], call.device)
        tokens, logprobs = sample_next(self.logits[:count], sampling, call.generator)  # [A], [A]
        finished = []
        produced = 0
        for s, (lv, t, lp) in enumerate(zip(self.live, tokens.tolist(), logprobs.float().tolist())):
            limit = lv.row.params.max_new_tokens
            if limit <= 0:  # nothing to generate: finished before sampling
                finished.append(s)
                continue
            lv.tokens.append(t)
            lv.logprobs.append(lp)
            lv.chunk = [t]
            produced += 1
            if t in call.stop_set or len(lv.tokens) >= limit:
                finished.append(s)
        call.tokens_generated(produced)
        return finished

    def _finish(self, finished: list[int]) -> None:
        if not finished:
            return
        call = self.call
        texts = call.decode([self.live[s].tokens for s in finished])
        freed: list[int] = []
        scratch: list[Row] = []
        for s, text in zip(finished, texts):
            lv = self.live[s]
            gen = call.record(lv.row, lv.tokens, lv.logprobs, text)
            nxt = call.continuation(lv.row, gen)
            if nxt is None:
                freed.append(s)
                continue
            child, suffix = nxt
            if suffix is None:  # a new prompt: back to the queue
                scratch.append(child)
                freed.append(s)
                continue
            # Stays in its slot: the unfed last token (if any) and the suffix are fed next.
            unfed = lv.chunk if lv.tokens else []
            lv.row = child
            lv.chunk = unfed + suffix
            lv.tokens, lv.logprobs = [], []
        self.queue.extendleft(reversed(scratch))
        self.waiting.update(tuple(r.prompt_ids) for r in scratch)
        self._release(freed)
        self._after_finish()

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
        logits = self._call(slots, chunks, [lv.length for lv in lives], [lv.prefix for lv in lives],
                            "slots", decode, self._prefixes(lives, decode))
        self.logits[torch.tensor(slots, device=logits.device)] = logits
        for lv, c in zip(lives, chunks):
            lv.length += len(c)
            lv.chunk = []

    def _call(self, rows_: list[int], chunks: list[list[int]], starts: list[int], offsets: list[int], store: str,
              decode: bool, prefixes: Prefixes | None = None) -> torch.Tensor:
        """One forward: each chunk (left-padded to the longest) written from its row's column `start`.

        store: "slots", or "prefix" (rows are prefix entries). Position ids are the columns
        plus `offsets` (a row's prefix length). Returns the next-token logits [B, V].
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
        ids = torch.full((len(rows_), width), call.pad_token_id, dtype=torch.long)  # [B, S]
        for b, c in enumerate(chunks):
            ids[b, width - len(c):] = torch.tensor(c, dtype=torch.long)
        kv_len = int(cols.max()) + 1
        self.stores[store].ensure(kv_len)
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
        # right-aligned chunks: the last column is a real token of every row
        with slot_attention_enabled(self.model):  # this forward only: `then` and everything else see the model as it is
            logits, _ = call.forward(self.cache, use_cache=False, input_ids=ids.to(dev),
                                     position_ids=positions.to(dev), r3rl_step=step)  # [B, V]
        self.cache.step = None
        self.forwards += 1
        if self.logits is None:
            self.logits = logits.new_empty(self.slots, logits.shape[-1])  # [slots, V]
        return logits


# ------------------------------------------------------------ shared prefixes


@dataclass(eq=False)
class _SharedLive(_Live):
    entry: int = -1  # the prefix entry the row attends to
    fresh: bool = True  # just admitted: takes the entry's next-token logits before its first sample


class SharedPrefixScheduler(SlotScheduler):
    """Shared-prefix (cascade) attention: a prompt's KV is stored once, in a prefix entry its rows attend to.

    An entry is prefilled when its prompt is first admitted and freed for the next prompt
    once no live row attends to it and no queued row will. prompt_capacity: first guess of
    an entry's columns; prompts: the call's prompt count (bounds the entries needed at once).
    """

    def __init__(self, call: Call, slots: int, capacity: int, dtype: torch.dtype, prompt_capacity: int,
                 prompts: int):
        prefix_store = model_store(base_model(call.module), max(1, min(slots, prompts)), prompt_capacity, dtype,
                                   call.device)
        super().__init__(call, slots, capacity, dtype, prefix_store)
        self.prefix_store = prefix_store
        # prompt -> entry, an entry's length (0 = free), its prompt and its next-token logits.
        self.entry_of: dict[tuple[int, ...], int] = {}
        self.entry_key: dict[int, tuple[int, ...]] = {}
        self.entry_len: list[int] = []
        self.entry_logits: dict[int, torch.Tensor] = {}
        self.to_prefill: list[int] = []
        self.free_entries: list[int] = []  # a heap: the lowest free entry is reused first

    @property
    def prefix_entries(self) -> int:
        return len(self.entry_len)

    def _admitted(self, rows: list[Row]) -> list[_Live]:
        lives: list[_Live] = []
        for row in rows:
            key = tuple(row.prompt_ids)
            entry = self.entry_of.get(key)
            if entry is None:
                entry = self._new_entry(key)
            lives.append(_SharedLive(row, prefix=len(key), entry=entry))
        return lives

    def _new_entry(self, key: tuple[int, ...]) -> int:
        entry = heapq.heappop(self.free_entries) if self.free_entries else len(self.entry_len)
        if entry == len(self.entry_len):
            self.entry_len.append(0)
        self.prefix_store.ensure(len(key), entry + 1)
        self.entry_of[key], self.entry_key[entry] = entry, key
        self.to_prefill.append(entry)
        return entry

    def _before_chunks(self) -> None:
        """Prefill the new entries; rows admitted to an entry take its next-token logits."""
        for group in _length_groups(self.to_prefill, lambda e: len(self.entry_key[e])):
            keys = [list(self.entry_key[e]) for e in group]
            logits = self._call(group, keys, [0] * len(group), [0] * len(group), "prefix", False)
            for e, key, lg in zip(group, keys, logits):
                self.entry_logits[e], self.entry_len[e] = lg, len(key)
        self.to_prefill = []
        for s, lv in enumerate(self.live):
            if lv.fresh:
                self.logits[s], lv.fresh = self.entry_logits[lv.entry], False

    def _after_finish(self) -> None:
        """An entry no live row attends to and no queued row will is free for the next prompt."""
        used = {lv.entry for lv in self.live}
        for key, entry in list(self.entry_of.items()):
            if entry not in used and self.waiting[key] <= 0:
                del self.entry_of[key], self.entry_key[entry]
                self.entry_logits.pop(entry, None)
                self.entry_len[entry] = 0
                heapq.heappush(self.free_entries, entry)

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


# ------------------------------------------------------------ copied prefixes


@dataclass(eq=False)
class _CopiedLive(_Live):
    origin: tuple[int, ...] = ()  # the prompt its cache starts with (prefilled from scratch)
    source: "_CopiedLive | None" = None  # copy this row's first len(origin) columns once it is fed


class CopiedPrefixScheduler(SlotScheduler):
    """Each row's slot holds its whole sequence: a prompt is prefilled in one row, the others copy its columns."""

    def __init__(self, call: Call, slots: int, capacity: int, dtype: torch.dtype):
        super().__init__(call, slots, capacity, dtype)
        self.prompt_logits: dict[tuple[int, ...], torch.Tensor] = {}  # [V] after a prompt still waited for

    def _admitted(self, rows: list[Row]) -> list[_Live]:
        """A prompt another live row holds (or is about to be fed) is copied from it, else prefilled."""
        first = {lv.origin: lv for lv in self.live if lv.origin in self.prompt_logits}
        lives: list[_Live] = []
        for row in rows:
            key = tuple(row.prompt_ids)
            live = _CopiedLive(row, origin=key)
            if key in first:
                live.source = first[key]
            else:
                live.chunk = list(row.prompt_ids)
                first[key] = live
            lives.append(live)
        return lives

    def _after_chunks(self, fed: list[int]) -> None:
        """Keep the logits of fresh prefills still waited for; copy prompts into the rows that wait on them."""
        for s in fed:
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
