"""Generation with any Hugging Face causal LM: shared prefills, KV-cache continuation, continuous batching.

Why a hand-written decode loop and not `model.generate`: r3rl's rollout asks for G
reflections of each failure context and then, for every reflection, a retry that
continues the same conversation. `generate` can neither fan one prefilled cache out
to G samples nor continue each row of a finished batch with its own suffix, so it
would prefill the (often 1,000-token, tool-schema-heavy) context 2G times.

`HFEngine` checks a call, builds its `Call` (r3rl/engine/call.py) and hands it to one of two paths:

* slots (r3rl/engine/batch.py, r3rl/engine/slots.py), for full-attention Llama/Qwen/Mistral
  models: continuous batching over a preallocated per-slot KV cache. Each prompt is
  prefilled once; its rows attend to that one copy (shared-prefix attention, for several
  rows of long prompts) or copy it into their slots; a finished row leaves the batch at
  once (or, if `then` continues it with a suffix, stays in its slot and feeds only the
  suffix), and waiting rows take freed slots, so a batch stays full while work remains.
* micro-batches (r3rl/engine/microbatch.py), for every other model and for the plain
  reference path (`share_prefix=False, reuse_cache=False`: every row and every
  continuation prefilled from scratch; tests compare the other paths with it).
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch

from r3rl.config import CpuMatmul
from r3rl.engine.base import Engine, ThenFn, prefix_setting
from r3rl.engine.batch import generate_slots
from r3rl.engine.call import Call, base_model, cache_argument
from r3rl.engine.half_matmul import LinearRewrite
from r3rl.engine.microbatch import MicroBatchRunner
from r3rl.engine.sampling import validate_params
from r3rl.engine.slots import register_slot_attention, supports_slots
from r3rl.types import Generation, SamplingParams


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module to call for generation: DDP / DeepSpeed / torch.compile wrappers removed, peft kept.

    A PeftModel stays as is: calling it applies the adapters. Distributed wrappers
    are skipped because generation needs no gradient synchronisation.
    """
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=True, keep_torch_compile=False)


class HFEngine(Engine):
    """Batched generation with a transformers causal LM (see module docstring).

    The model object is shared with the trainer: its weights change in place, so
    the engine never needs a weight sync. Generation runs under inference_mode in
    eval mode; every submodule's train/eval flag is restored afterwards.

    stop_token_ids overrides the tokenizer-derived stop set (an empty list means
    "stop only at max_new_tokens", as benchmarks need). shared_prefix_attention (slots
    path): True stores a prompt's KV once and lets all its rows attend to it (cascade
    attention); False copies it into each row's slot; "auto" decides per call
    (`use_shared_prefix`). cpu_matmul: "auto" multiplies bfloat16 / float16 linear layers in
    float32 on a CPU that only emulates them and wide float32 ones in slabs, "float32" the half
    ones on every CPU, "native" never (r3rl/engine/half_matmul.py); half_matmul is its old name.
    Both the rewrite and the slot attention are switched on around each of the engine's own
    model calls only; the shared model's config is never changed.
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
        cpu_matmul: str = CpuMatmul.AUTO,
        half_matmul: str | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if half_matmul is not None:  # the old name (r3rl 0.2), removed in 0.3
            warnings.warn("HFEngine(half_matmul=...) is now cpu_matmul=... (the old name is removed in r3rl 0.3)",
                          FutureWarning, stacklevel=2)
            cpu_matmul = half_matmul
        cpu_matmul = CpuMatmul.parse(cpu_matmul, "cpu_matmul")
        register_slot_attention()
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.share_prefix = share_prefix
        self.reuse_cache = reuse_cache
        self.shared_prefix_attention = prefix_setting(shared_prefix_attention)
        self.autocast = autocast  # the trainer's mixed-precision context, entered around every call
        self.cpu_matmul = cpu_matmul
        self.last_stats: dict[str, int] = {}  # the last slot-path call: forwards, peak KV bytes, prefix entries
        self._stop_override = None if stop_token_ids is None else sorted({int(t) for t in stop_token_ids})
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad) if pad is not None else 0

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
        `Generation.logprobs` are the sampling log-probs of docs/design.md, "The log-prob contract":
        log_softmax of the model's logits at temperature 1, before top-k / top-p (engine/sampling.py).
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
        model = base_model(module)
        device = _device(module)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(params.seed))
        forward_sig = inspect.signature(model.forward).parameters
        call = Call(
            module=module,
            device=device,
            generator=generator,
            stop=torch.tensor(self.stop_token_ids(), dtype=torch.long, device=device),  # [S]
            then=then,
            results=[[None] * n for _ in prompts],
            forward_kwargs={"logits_to_keep": 1} if "logits_to_keep" in forward_sig else {},
            cache_arg=cache_argument(forward_sig),
            pad_token_id=self.pad_token_id,
            decode=self.decode_generated,
            on_tokens=self.on_tokens,
            on_generated=self.on_generated,
            forward_scope=LinearRewrite(module, self.cpu_matmul).swapped,
        )
        with self._inference(module):
            if self.share_prefix and self.reuse_cache and supports_slots(model):
                self.last_stats = generate_slots(call, prompts, params, n, self.max_batch_size,
                                                 self.shared_prefix_attention)
            else:
                MicroBatchRunner(call, self.max_batch_size, self.share_prefix, self.reuse_cache).run(prompts, params, n)
        return call.results  # type: ignore[return-value]

    @contextmanager
    def _inference(self, module: torch.nn.Module) -> Iterator[None]:
        """eval mode and inference_mode for the call; train/eval flags restored after."""
        modes = [(m, m.training) for m in self.model.modules()] + [(m, m.training) for m in module.modules()]
        module.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for m, training in modes:
                m.training = training


def _device(module: torch.nn.Module) -> torch.device:
    device = getattr(module, "device", None)
    return device if isinstance(device, torch.device) else next(module.parameters()).device
