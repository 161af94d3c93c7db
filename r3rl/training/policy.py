"""The trained model: loading, LoRA or full fine-tuning, the reference, and the log-prob module.

With LoRA the reference model is the base with adapters disabled (no second copy);
with full fine-tuning a frozen copy is kept only when the KL weight is non-zero.

Precision, as the Hugging Face Trainer and TRL do it: trainable weights (and so the
optimizer state) are float32 and the forward passes run under autocast
(`train.mixed_precision`). AdamW stepping bf16 weights in place rounds the paper's
5e-7 updates away (measured in tests/test_mixed_precision.py). A LoRA base is frozen,
so it may sit in the half-precision compute dtype; its adapters stay float32.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r3rl.config import ModelConfig, TrainConfig
from r3rl.engine.loading import resolve_model_name
from r3rl.training.logprobs import completion_logprobs


class LogprobModel(nn.Module):
    """forward() = reflection-token log-probs, so DDP / FSDP / DeepSpeed see the whole computation."""

    def __init__(self, model: nn.Module, chunk_size: int, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.temperature = temperature  # the reflections' sampling temperature: log-probs of softmax(logits / T)

    def forward(self, input_ids, attention_mask, completion_mask, group_ids=None):  # [B, T] each (+ [B]) -> [B, T]
        return completion_logprobs(self.model, input_ids, attention_mask, completion_mask, chunk_size=self.chunk_size,
                                   temperature=self.temperature, group_ids=group_ids)


def training_dtype(mcfg: ModelConfig, tcfg: TrainConfig, mixed_precision: str, device: torch.device) -> str:
    """The dtype the trained model loads in. `auto`: float32 for full fine-tuning (the master weights
    AdamW steps; autocast does the half-precision compute), and for LoRA the frozen base in the
    mixed-precision dtype (its float32 adapters are created by peft). An explicit dtype is kept."""
    if mcfg.dtype != "auto":
        return mcfg.dtype
    lora = tcfg.lora or _is_adapter_folder(mcfg.name_or_path)
    if lora and device.type != "cpu":
        return {"bf16": "bfloat16", "fp16": "float16"}.get(mixed_precision, "float32")
    return "float32"


def _is_adapter_folder(name: str) -> bool:
    return (Path(resolve_model_name(name)).expanduser() / "adapter_config.json").is_file()


def build_policy(mcfg: ModelConfig, tcfg: TrainConfig, device: torch.device,
                 mixed_precision: str = "no") -> tuple[nn.Module, Any, nn.Module | None]:
    """(trainable model, tokenizer, frozen reference or None). LoRA -> the reference is the model itself
    with adapters disabled, returned as None here (see `reference_logprobs`)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from r3rl.engine import load_model

    dtype = training_dtype(mcfg, tcfg, mixed_precision, device)
    if dtype != "float32" and not tcfg.lora and not _is_adapter_folder(mcfg.name_or_path):
        warnings.warn(f"model.dtype={dtype} with full fine-tuning: AdamW updates {dtype} weights in place and small "
                      f"updates round away (at lr 5e-7 almost none land); use model.dtype=auto and "
                      f"train.mixed_precision=bf16 instead", stacklevel=2)
    model, tok = load_model(mcfg.name_or_path, dtype=dtype, device=device, base=mcfg.base,
                            trust_remote_code=mcfg.trust_remote_code, revision=mcfg.revision or None,
                            attn_implementation=mcfg.attn_implementation or None, init_kwargs=mcfg.init_kwargs)
    if isinstance(model, PeftModel):
        # continuing from an adapter folder: train that adapter (in float32 over a half-precision base)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
            if p.requires_grad:
                p.data = p.data.float()
    elif tcfg.lora:
        targets: Any = tcfg.lora_target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        config = LoraConfig(r=tcfg.lora_r, lora_alpha=tcfg.lora_alpha, lora_dropout=tcfg.lora_dropout,
                            target_modules=targets, task_type="CAUSAL_LM")
        with warnings.catch_warnings():
            # peft (0.21) reads the model's deprecated `is_gradient_checkpointing`; nothing here can rename it
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = get_peft_model(model, config)
    ref = None
    if not is_peft(model) and tcfg.beta > 0:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    if tcfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
        if is_peft(model):
            model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    return model, tok, ref


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward (non-reentrant). transformers 5.24 renamed
    gradient_checkpointing_enable to activation_checkpointing_enable (the old name warns and goes in v6);
    5.19 (the vLLM environment's) has only the old one."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_logprobs(model: nn.Module, ref: nn.Module | None, chunk_size: int, *batch: torch.Tensor,
                       temperature: float = 1.0, group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Reference log-probs [B, T] at the sampling temperature: the frozen copy, or the LoRA model with
    adapters disabled (group_ids: the shared-prefix layout, as the policy's). Call under the same
    autocast as the policy's forward."""
    target = ref if ref is not None else model
    ctx = model.disable_adapter() if ref is None and is_peft(model) else nullcontext()
    with torch.no_grad(), ctx:
        return completion_logprobs(target, *batch, chunk_size=chunk_size, temperature=temperature,
                                   group_ids=group_ids)


def save_final(model: nn.Module, tokenizer: Any, folder: Path, merge: bool = False,
               state_dict: dict[str, torch.Tensor] | None = None) -> list[Path]:
    """Save the Hugging Face way (atomically): an adapter folder for LoRA (and merged weights on
    request), full weights otherwise. Returns the folders written.

    state_dict: the full (gathered) weights when the model's own parameters are shards (FSDP2); the
    trainer gets it from `accelerator.get_state_dict` on every rank. Keys as in model.state_dict(), a tied
    weight once.
    """
    from r3rl.runtime.io import replace_dir

    written = []
    try:
        with replace_dir(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
    except Exception as e:  # safetensors reports a full disk as SafetensorError; name the folder instead
        raise OSError(f"{folder}: saving the final model failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      "check free space and write permission") from None
    written.append(folder)
    if merge and is_peft(model):
        merged_dir = folder.parent / (folder.name + "-merged")
        merged = copy.deepcopy(model).merge_and_unload()
        with replace_dir(merged_dir) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        written.append(merged_dir)
    return written
