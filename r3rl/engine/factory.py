"""One function turns `generation.backend` into an engine; a new backend is one new module and one branch here.

    hf    r3rl's transformers engine (r3rl/engine/hf.py). It shares the model object with the
          trainer, so training needs no weight sync.
    vllm  vLLM (r3rl/engine/vllm.py), loaded from `model.name_or_path`; a trainer pushes its
          weights to it after optimizer steps.

`autocast` (a zero-argument context-manager factory, e.g. `Accelerator.autocast`) wraps every
generate call: the trainer generates under the same mixed precision as its training forward.
`load_engine` is the same construction from a model name and keyword settings (tests, scripts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager

from r3rl.config import Backend
from r3rl.engine.base import Engine

if TYPE_CHECKING:
    from r3rl.config import GenerationConfig, ModelConfig


def build_engine(
    generation: "GenerationConfig",
    model_cfg: "ModelConfig",
    *,
    model: Any = None,
    tokenizer: Any = None,
    autocast: Callable[[], ContextManager[Any]] | None = None,
    device: Any = None,
) -> Engine:
    """The engine `generation.backend` names, over `model` (loaded from `model_cfg` when not given)."""
    backend = Backend.parse(generation.backend, "generation.backend")
    if backend == Backend.HF:
        from r3rl.engine.hf import HFEngine

        if model is None:
            from r3rl.engine.loading import load_for_inference

            model, tokenizer = load_for_inference(model_cfg, device=device)
        return HFEngine(model, tokenizer, max_batch_size=generation.max_batch_size,
                        shared_prefix_attention=generation.shared_prefix_attention, autocast=autocast,
                        cpu_matmul=generation.cpu_matmul)
    from r3rl.engine.vllm import VLLMEngine  # Backend.VLLM; vLLM is optional: its module says how to install it

    return VLLMEngine.from_config(generation, model_cfg, model=model, tokenizer=tokenizer)


def load_engine(name_or_path: str, *, generation: "GenerationConfig | None" = None, device: Any = None,
                **model_fields: Any) -> Engine:
    """`build_engine` over the model `name_or_path` names (a hub id, a folder, a LoRA adapter folder).

    generation: the engine's settings (default GenerationConfig()); model_fields: other
    ModelConfig fields (dtype, base, revision, ...).
    """
    from r3rl.config import GenerationConfig, ModelConfig

    return build_engine(generation or GenerationConfig(), ModelConfig(name_or_path=name_or_path, **model_fields),
                        device=device)
