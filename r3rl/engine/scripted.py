"""A scripted engine: answers come from a Python function of the prompt text.

For tests of rollouts, mining and evaluation without a model (as `verifiers` does),
and for users checking a new task's plumbing. It follows the Engine contract
exactly, `then` continuations included, by rebuilding the full prompt each time.
"""

from __future__ import annotations

from typing import Callable

from r3rl.engine.base import Engine, ThenFn
from r3rl.types import Generation, SamplingParams

# script(prompt_text, sample_index) -> completion text (the stop token is appended by the engine)
Script = Callable[[str, int], str]


class ScriptedEngine(Engine):
    def __init__(self, tokenizer, script: Script):
        self.tokenizer = tokenizer
        self.script = script
        self.calls: list[tuple[str, SamplingParams]] = []  # every prompt seen, in order

    def _one(self, prompt_ids: list[int], params: SamplingParams, j: int) -> Generation:
        prompt_text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        self.calls.append((prompt_text, params))
        text = self.script(prompt_text, j)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        finish = "stop"
        if len(ids) >= params.max_new_tokens:
            ids, finish = ids[: params.max_new_tokens], "length"
        else:
            ids = ids + [self.tokenizer.eos_token_id]
        if self.on_tokens is not None:
            self.on_tokens(len(ids))
        if self.on_generated is not None:
            self.on_generated(1)
        return Generation(
            prompt_ids=list(prompt_ids),
            token_ids=ids,
            text=self.decode_generated([ids])[0],
            logprobs=[0.0] * len(ids),
            finish_reason=finish,
        )

    def generate(self, prompts, params, n=1, then: ThenFn | None = None):
        out = []
        for i, p in enumerate(prompts):
            row = []
            for j in range(n):
                gen = self._one(p, params, j)
                row.append(gen)
                depth, cur = 0, gen
                while then is not None:
                    cont = then(i, j, depth, cur)
                    if cont is None:
                        break
                    full = cont.prompt_ids if cont.prompt_ids is not None else cur.prompt_ids + cur.token_ids + cont.suffix_ids
                    cur.next = self._one(full, cont.params, j)
                    cur, depth = cur.next, depth + 1
            out.append(row)
        return out
