"""The generation interface: token ids in; token ids, text and per-token log-probs (see `Generation`) out.

Multi-turn work (reflect, then retry) goes through one call: `then` is called on
every finished generation and may return a `Continuation`, which the engine
generates next *from the state it already holds* (the prompt, the generated
tokens and the suffix), so a backend with a KV cache never prefills the shared
part twice. A backend without that ability simply builds the longer prompt and
generates from scratch; the results are the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from r3rl.config import Switch
from r3rl.types import Generation, SamplingParams


@dataclass
class Continuation:
    """What to generate after a finished generation.

    suffix_ids are appended to prompt + generated tokens (the cache is reused).
    When a chat template cannot be continued token for token, give prompt_ids
    instead: a whole new prompt, generated from scratch.
    """

    params: SamplingParams
    suffix_ids: list[int] | None = None
    prompt_ids: list[int] | None = None


# then(prompt_index, sample_index, depth, generation) -> Continuation | None
# depth is 0 for the first generation of a prompt, 1 for its continuation, ...
ThenFn = Callable[[int, int, int, Generation], "Continuation | None"]


class Engine(ABC):
    """A generation backend. `tokenizer` is a Hugging Face tokenizer."""

    tokenizer: Any
    #: called with the number of tokens generated at each decoding step (progress display), if set
    on_tokens: Callable[[int], None] | None = None
    #: called with 1 as each generation finishes (a then() continuation is a generation of its own), if set:
    #: progress moves per finished row inside one long call
    on_generated: Callable[[int], None] | None = None
    #: True when the engine generates from its own copy of the weights (vLLM): a trainer must push its
    #: updates with sync_weights. An engine over the training model object itself (hf) sees them at once.
    holds_weights: bool = False

    def sync_weights(self, model: Any) -> None:
        """Generate with `model`'s current weights from now on (nothing to do for an engine over `model` itself)."""

    def close(self) -> None:
        """Release what the engine holds (vLLM: its workers and device memory). Whoever builds an engine
        closes it, on error and Ctrl-C too (`with engine:` does); nothing to do for an engine over a model
        the caller owns (hf). Closing twice is harmless."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @abstractmethod
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        n: int = 1,
        then: ThenFn | None = None,
    ) -> list[list[Generation]]:
        """For each prompt, `n` samples (result[i][j]); continuations hang off `Generation.next`.

        Generation stops at the tokenizer's EOS / end-of-turn ids or at
        params.max_new_tokens. The returned order matches the input order.
        """

    #: a backend's stop set given by its caller (an empty list: stop only at max_new_tokens), else None
    _stop_override: list[int] | None = None

    def stop_token_ids(self) -> list[int]:
        """Token ids that end a turn: the caller's override if any, else EOS plus the chat template's
        end-of-turn token if it has one."""
        if self._stop_override is not None:
            return list(self._stop_override)
        tok = self.tokenizer
        ids = set()
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        for special in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
            tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
            if tid is not None and tid != tok.unk_token_id:
                ids.add(int(tid))
        return sorted(ids)

    def decode_generated(self, token_rows: list[list[int]]) -> list[str]:
        """Text of generated tokens as a verifier should see it.

        Only the turn's control tokens (the stop set, padding, BOS) are removed.
        `skip_special_tokens=True` would also strip tokens some tokenizers mark
        special although they carry the answer's structure, such as Hermes/Qwen
        `<tool_call>` tags or Llama-3's `<|python_tag|>`: a correct two-call answer
        would then lose the separators between its calls.
        """
        tok = self.tokenizer
        drop = set(self.stop_token_ids())
        for special in (tok.pad_token_id, tok.bos_token_id):
            if special is not None:
                drop.add(int(special))
        kept = [[t for t in row if t not in drop] for row in token_rows]
        return tok.batch_decode(kept, skip_special_tokens=False)


# Shared-prefix attention reads a prompt's KV once per group instead of once per row and
# stores it once, but runs a second, smaller attention and a merge in every layer. On
# this project's CPU measurements (BENCHMARKS.md) it cost 11-14% on 120-token prompts or
# G = 1 and broke even or won from about 1,000-token prompts with G = 8 (with 2.5-6x
# less KV memory); the threshold sits between them.
SHARED_PREFIX_MIN_TOKENS = 512


def prefix_setting(value: bool | str) -> bool | None:
    """True / False / None (auto) from a bool or the config's "on" / "off" / "auto" (a `Switch`)."""
    if isinstance(value, bool):
        return value
    return {Switch.ON: True, Switch.OFF: False, Switch.AUTO: None}[Switch.parse(value, "shared_prefix_attention")]


def use_shared_prefix(setting: bool | None, prompts: list[list[int]], n: int) -> bool:
    """Whether a call uses shared-prefix attention: the setting, or (auto) several rows of long prompts."""
    if setting is not None:
        return setting
    return n > 1 and sum(map(len, prompts)) >= SHARED_PREFIX_MIN_TOKENS * len(prompts)
