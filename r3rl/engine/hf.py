"""Generation with any Hugging Face causal LM: shared prefills, KV-cache continuation, continuous batching.

Why a hand-written decode loop and not `model.generate`: r3rl's rollout asks for G
reflections of each failure context and then, for every reflection, a retry that
continues the same conversation. `generate` can neither fan one prefilled cache out
to G samples nor continue each row of a finished batch with its own suffix, so it
would prefill the (often 1,000-token, tool-schema-heavy) context 2G times.

Two paths:

* slots (Llama/Qwen-style full-attention models, r3rl/engine/batch.py and slots.py):
  continuous batching over a preallocated per-slot KV cache. Each prompt is prefilled
  once; its rows attend to that one copy (shared-prefix attention, for several rows of
  long prompts) or copy it into their slots; a finished row leaves the batch at once (or, if `then`
  continues it with a suffix, stays in its slot and feeds only the suffix), and waiting
  rows take freed slots, so a batch stays full while work remains.
* micro-batches (every other model, and the plain reference path): identical prompts
  of a micro-batch are prefilled once and the `DynamicCache` fanned out; a continuation
  appends the row's not-yet-cached tokens plus its suffix to that row's cache. Rows stop
  at different times, so a row's cache holds padding *in the middle*; the attention
  mask marks it 0 and position ids count real tokens only (cumsum(mask) - 1). A
  micro-batch of at most `max_batch_size` rows runs its whole chain before the next.

`share_prefix=False, reuse_cache=False` is the plain path (micro-batches, every row and
every continuation prefilled from scratch); tests use it as the reference.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
from transformers import DynamicCache

from r3rl.engine.base import Engine, ThenFn, prefix_setting, use_shared_prefix
from r3rl.engine.batch import Call, Row, SlotScheduler, check_continuation
from r3rl.engine.sampling import RowSampling, sample_next, validate_params
from r3rl.engine.slots import slot_attention_enabled, supports_slots
from r3rl.types import Generation, SamplingParams


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


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module to call for generation: DDP / DeepSpeed / torch.compile wrappers removed, peft kept.

    A PeftModel stays as is: calling it applies the adapters. Distributed wrappers
    are skipped because generation needs no gradient synchronisation.
    """
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=True, keep_torch_compile=False)


def _transformers_model(module: torch.nn.Module) -> torch.nn.Module:
    """The underlying PreTrainedModel (through a peft wrapper), for its config and forward signature."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


class HFEngine(Engine):
    """Batched generation with a transformers causal LM (see module docstring).

    The model object is shared with the trainer: its weights change in place, so
    the engine never needs a weight sync. Generation runs under inference_mode in
    eval mode; every submodule's train/eval flag is restored afterwards.

    stop_token_ids overrides the tokenizer-derived stop set (an empty list means
    "stop only at max_new_tokens", as benchmarks need). shared_prefix_attention (slots
    path): True stores a prompt's KV once and lets all its rows attend to it (cascade
    attention); False copies it into each row's slot; "auto" decides per call
    (`use_shared_prefix`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_batch_size: int = 64,
        share_prefix: bool = True,
        reuse_cache: bool = True,
        stop_token_ids: Sequence[int] | None = None,
        shared_prefix_attention: bool | str = "auto",
        autocast: Callable[[], ContextManager[Any]] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
        self.reuse_cache = reuse_cache
        self.shared_prefix_attention = prefix_setting(shared_prefix_attention)
        self.autocast = autocast  # the trainer's mixed-precision context, entered around every call
        self.last_stats: dict[str, int] = {}  # the last slot-path call: forwards, peak KV bytes, prefix entries
        self._stop_override = None if stop_token_ids is None else sorted({int(t) for t in stop_token_ids})
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0

    def stop_token_ids(self) -> list[int]:
        if self._stop_override is not None:
            return list(self._stop_override)
        return super().stop_token_ids()

    # ------------------------------------------------------------------ public

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        n: int = 1,
        then: ThenFn | None = None,
    ) -> list[list[Generation]]:
        """n samples per prompt, continuations attached as `Generation.next` (see `Engine.generate`).

        One torch.Generator seeded from `params.seed` drives the whole call,
        continuations included (a Continuation's own seed is not used), so the
        call is reproducible from that one seed; seed=None uses torch's global RNG.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        with self.autocast() if self.autocast is not None else nullcontext():
            return self._generate(prompts, params, n, then)

    def _generate(self, prompts: list[list[int]], params: SamplingParams, n: int,
                  then: ThenFn | None) -> list[list[Generation]]:
        validate_params(params)
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; a generation needs at least one prompt token")
        module = unwrap_model(self.model)
        device = _device(module)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(params.seed))
        forward_sig = inspect.signature(_transformers_model(module).forward).parameters
        call = Call(
            module=module,
            device=device,
            generator=generator,
            stop=torch.tensor(self.stop_token_ids(), dtype=torch.long, device=device),  # [S]
            then=then,
            results=[[None] * n for _ in prompts],
            forward_kwargs={"logits_to_keep": 1} if "logits_to_keep" in forward_sig else {},
        )
        if self.share_prefix and self.reuse_cache and supports_slots(_transformers_model(module)):
            self._generate_slots(call, prompts, params, n)
            return call.results  # type: ignore[return-value]
        with self._inference(module):
            for units in self._micro_batches(len(prompts), n):
                rows = [Row(i, j, 0, list(prompts[i]), params) for i, samples in units for j in samples]
                self._run(call, self._prefill(call, rows))
        return call.results  # type: ignore[return-value]

    # --------------------------------------------------------------- internals

    def _generate_slots(self, call: Call, prompts: list[list[int]], params: SamplingParams, n: int) -> None:
        """Continuous batching over a preallocated slot cache (r3rl/engine/batch.py)."""
        rows = [Row(i, j, 0, list(p), params) for i, p in enumerate(prompts) for j in range(n)]
        base = _transformers_model(call.module)
        dtype = base.get_input_embeddings().weight.dtype
        longest = max(len(p) for p in prompts)
        shared = use_shared_prefix(self.shared_prefix_attention, prompts, n)
        capacity = params.max_new_tokens + 1 + (0 if shared else longest)  # a first guess: slots grow on demand
        scheduler = SlotScheduler(self, call, min(self.max_batch_size, len(rows)), capacity, dtype,
                                  shared_prefix=shared, prompt_capacity=longest, prompts=len(prompts))
        with self._inference(call.module), slot_attention_enabled(base):
            scheduler.run(rows)
        self.last_stats = {"forwards": scheduler.forwards, "kv_bytes": scheduler.peak_kv_bytes,
                           "prefix_entries": len(scheduler.entry_len)}

    def _micro_batches(self, prompt_count: int, n: int) -> list[list[tuple[int, range]]]:
        """Group (prompt, sample range) units so that no micro-batch exceeds max_batch_size rows.

        A prompt's samples stay together when they fit (they share one prefill);
        if n > max_batch_size they are split and each part prefills the prompt once.
        """
        cap = self.max_batch_size
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

    @contextmanager
    def _inference(self, module: torch.nn.Module) -> Iterator[None]:
        """eval mode + inference_mode; every submodule's own train/eval flag is put back afterwards."""
        modes = [(m, m.training) for m in self.model.modules()] + [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for m, training in modes:
                m.training = training

    def _forward(self, call: Call, state: _State, ids: torch.Tensor, real: torch.Tensor) -> None:
        """Feed a right-aligned chunk to every row of `state` and update it in place.

        ids, real: [B, S]; real marks true tokens (False = padding). Position ids
        count real tokens only, so padding anywhere in a row changes nothing for it.
        A row with no real token in the chunk keeps its previous next-token logits.
        """
        positions = (state.n_real[:, None] + real.long().cumsum(-1) - 1).clamp_min(0)  # [B, S]
        state.mask = torch.cat([state.mask, real.long()], dim=-1)  # [B, L + S]
        out = call.module(
            input_ids=ids, attention_mask=state.mask, position_ids=positions,
            past_key_values=state.cache, use_cache=True, **call.forward_kwargs,
        )
        logits = out.logits[:, -1, :]  # [B, V]; right-aligned, so the last column is a real token
        has_real = real.any(dim=-1)  # [B]
        state.logits = logits if state.logits is None else torch.where(has_real[:, None], logits, state.logits)
        state.n_real = state.n_real + real.long().sum(-1)  # [B]
        state.cache = out.past_key_values

    def _right_aligned(self, seqs: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad token lists into (ids [B, S], real [B, S])."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)  # [B, S]
        real = torch.zeros((len(seqs), width), dtype=torch.bool)  # [B, S]
        for b, s in enumerate(seqs):
            if s:
                ids[b, width - len(s):] = torch.tensor(s, dtype=torch.long)
                real[b, width - len(s):] = True
        return ids.to(device), real.to(device)

    def _prefill(self, call: Call, rows: list[Row]) -> _State:
        """Prefill the rows' prompts from scratch; identical prompts only once when share_prefix is on."""
        if self.share_prefix:
            first: dict[tuple[int, ...], int] = {}
            index = [first.setdefault(tuple(r.prompt_ids), len(first)) for r in rows]
            unique = [list(k) for k in first]
        else:
            index, unique = list(range(len(rows))), [r.prompt_ids for r in rows]
        ids, real = self._right_aligned(unique, call.device)  # [U, P]
        state = _State(
            rows=rows,
            sampling=RowSampling.from_params([r.params for r in rows], call.device),
            cache=DynamicCache(config=_transformers_model(call.module).config),
            mask=torch.zeros(len(unique), 0, dtype=torch.long, device=call.device),  # [U, 0]
            n_real=torch.zeros(len(unique), dtype=torch.long, device=call.device),  # [U]
            logits=None,
        )
        self._forward(call, state, ids, real)
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

    def _decode(self, call: Call, state: _State) -> list[tuple[list[int], list[float], str]]:
        """Sample until every row hit a stop token or its max_new_tokens; finished rows are fed padding.

        Returns (token_ids, logprobs, finish_reason) per row and leaves each row's
        last token in state.pending when it was sampled but never fed.
        """
        max_new = torch.tensor([r.params.max_new_tokens for r in state.rows], device=call.device)  # [B]
        done = max_new <= 0  # [B]
        generated = torch.zeros_like(max_new)  # [B]
        last_active = torch.zeros_like(done)  # [B]
        pad = torch.full_like(max_new, self.pad_token_id)  # [B]
        step_tokens: list[torch.Tensor] = []
        step_logprobs: list[torch.Tensor] = []
        while not bool(done.all()):
            tokens, logprobs = sample_next(state.logits, state.sampling, call.generator)  # [B], [B]
            active = ~done  # [B] rows producing a real token this step
            tokens = torch.where(active, tokens, pad)
            step_tokens.append(tokens)
            step_logprobs.append(logprobs)
            generated = generated + active.long()
            if self.on_tokens is not None:
                self.on_tokens(int(active.sum()))
            done = done | (active & torch.isin(tokens, call.stop)) | (generated >= max_new)
            last_active = active
            if bool(done.all()):
                break  # last tokens stay pending: only a continuation needs them in the cache
            self._forward(call, state, tokens[:, None], active[:, None])

        counts = generated.tolist()
        if step_tokens:
            token_rows = torch.stack(step_tokens, dim=1).tolist()  # [B, steps]
            logprob_rows = torch.stack(step_logprobs, dim=1).float().tolist()  # [B, steps]
        else:
            token_rows = logprob_rows = [[] for _ in state.rows]
        stop_set = set(call.stop.tolist())
        fed_last = [not a for a in last_active.tolist()]
        outputs = []
        for b, count in enumerate(counts):
            tokens_b = token_rows[b][:count]
            reason = "stop" if tokens_b and tokens_b[-1] in stop_set else "length"
            outputs.append((tokens_b, logprob_rows[b][:count], reason))
            state.pending[b] = [] if fed_last[b] else tokens_b[-1:]
        return outputs

    def _run(self, call: Call, state: _State) -> None:
        """Decode a state, record its generations, then run their continuations, cache-reusing ones first."""
        outputs = self._decode(call, state)
        texts = self.decode_generated([o[0] for o in outputs])
        generations = []
        for row, (token_ids, logprobs, reason), text in zip(state.rows, outputs, texts):
            gen = Generation(prompt_ids=row.prompt_ids, token_ids=token_ids, text=text,
                             logprobs=logprobs, finish_reason=reason)
            if row.parent is None:
                call.results[row.prompt_index][row.sample_index] = gen
            else:
                row.parent.next = gen
            generations.append(gen)
        if call.then is None:
            state.release()
            return

        reuse = self.reuse_cache and self._cache_reusable(state)
        kept: list[int] = []
        chunks: list[list[int]] = []
        cached_rows: list[Row] = []
        scratch_rows: list[Row] = []
        for b, (row, gen) in enumerate(zip(state.rows, generations)):
            cont = call.then(row.prompt_index, row.sample_index, row.depth, gen)
            if cont is None:
                continue
            suffix, prompt = check_continuation(cont)
            if prompt is None:
                prompt = row.prompt_ids + gen.token_ids + suffix
            child = Row(row.prompt_index, row.sample_index, row.depth + 1, prompt, cont.params, parent=gen)
            if cont.suffix_ids is not None and reuse:
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
                ids, real = self._right_aligned(chunks, call.device)  # [B', S]
                self._forward(call, state, ids, real)
            state.pending = [[] for _ in cached_rows]
            self._run(call, state)
        state.release()
        if scratch_rows:
            self._run(call, self._prefill(call, scratch_rows))


def _device(module: torch.nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    return device if isinstance(device, torch.device) else next(module.parameters()).device
