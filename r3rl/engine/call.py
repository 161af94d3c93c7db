"""What both generation paths of the transformers engine share: one call's fixed state, its rows, its results.

`Call` is the narrow interface between `HFEngine` and a path (r3rl/engine/batch.py,
r3rl/engine/microbatch.py): the model to call and how to call it, the stop set, `then`,
the results being filled, and the three things a path needs from the engine (its pad id,
its text decoding, its progress hook). A path never sees the engine itself.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from r3rl.engine.base import Continuation, ThenFn
from r3rl.engine.sampling import validate_params
from r3rl.types import Generation, SamplingParams


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
    forward_kwargs: dict[str, Any]  # extra model-call arguments (logits_to_keep where the model has it)
    cache_arg: str  # the model's name for the KV cache, in its forward and its output (see `cache_argument`)
    pad_token_id: int  # from the engine: the token fed where a row has nothing to feed
    decode: Callable[[list[list[int]]], list[str]]  # from the engine: generated tokens -> text (decode_generated)
    on_tokens: Callable[[int], None] | None  # from the engine: progress, called with the tokens of each step
    on_generated: Callable[[int], None] | None = None  # from the engine: progress, called with 1 per finished generation
    # from the engine: entered around each model call only (its CPU linear rewrite, r3rl/engine/half_matmul.py),
    # so nothing between forwards (`then`, the verifier it calls) sees it
    forward_scope: Callable[[], ContextManager[Any]] = nullcontext

    def __post_init__(self) -> None:
        self.stop_set = set(self.stop.tolist())

    def forward(self, cache: Any, use_cache: bool, **inputs: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """One model call; returns (next-token logits of the last column [B, V], the cache the model returned)."""
        with self.forward_scope():
            out = self.module(**inputs, **{self.cache_arg: cache}, use_cache=use_cache, **self.forward_kwargs)
        return out.logits[:, -1, :], getattr(out, self.cache_arg, None) if use_cache else None

    def tokens_generated(self, count: int) -> None:
        """Report `count` new tokens to the progress hook (one call per decoding step)."""
        if self.on_tokens is not None and count > 0:
            self.on_tokens(count)

    def record(self, row: Row, token_ids: list[int], logprobs: list[float], text: str) -> Generation:
        """The finished generation of `row`, stored as a result or as its parent's `next`."""
        reason = "stop" if token_ids and token_ids[-1] in self.stop_set else "length"
        gen = Generation(prompt_ids=row.prompt_ids, token_ids=token_ids, text=text, logprobs=logprobs,
                         finish_reason=reason)
        if row.parent is None:
            self.results[row.prompt_index][row.sample_index] = gen
        else:
            row.parent.next = gen
        if self.on_generated is not None:
            self.on_generated(1)
        return gen

    def continuation(self, row: Row, gen: Generation) -> tuple[Row, list[int] | None] | None:
        """Ask `then` about a finished generation: None (it ends), or (the next row, its suffix).

        The suffix is None when `then` gave a whole new prompt (generated from scratch);
        otherwise the next row's prompt is row's prompt + generated tokens + suffix, and a
        path holding row's cache may feed only the suffix (and the not-yet-fed last token).
        """
        if self.then is None:
            return None
        cont = self.then(row.prompt_index, row.sample_index, row.depth, gen)
        if cont is None:
            return None
        suffix, prompt = check_continuation(cont)
        if prompt is not None:
            return Row(row.prompt_index, row.sample_index, row.depth + 1, prompt, cont.params, gen), None
        return Row(row.prompt_index, row.sample_index, row.depth + 1, row.prompt_ids + gen.token_ids + suffix,
                   cont.params, gen), suffix


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


def base_model(module: torch.nn.Module) -> torch.nn.Module:
    """The underlying PreTrainedModel (through a peft wrapper), for its config and forward signature."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def cache_argument(forward_parameters: Any) -> str:
    """The KV cache's keyword: `cache` from transformers 5.24 (`past_key_values` warns there, and goes
    in 5.40), `past_key_values` before (5.23 and older have no `cache`)."""
    return "cache" if "cache" in forward_parameters else "past_key_values"
