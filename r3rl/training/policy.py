"""The trained model: loading, LoRA or full fine-tuning, the reference, and the log-prob module.

With LoRA the reference model is the base with adapters disabled (no second copy);
with full fine-tuning a frozen copy is kept only when the KL weight is non-zero.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from r3rl.config import ModelConfig, TrainConfig
from r3rl.training.logprobs import completion_logprobs

def load_for_inference(mcfg: ModelConfig, device: str | torch.device | None = None) -> tuple[nn.Module, Any]:
    """Model + tokenizer for mining / evaluation (a LoRA adapter folder loads on top of its base)."""
    from r3rl.engine import load_model

    return load_model(
        mcfg.name_or_path, dtype=mcfg.dtype, device=device,
        base=mcfg.base, trust_remote_code=mcfg.trust_remote_code, revision=mcfg.revision or None,
        attn_implementation=mcfg.attn_implementation or None, init_kwargs=mcfg.init_kwargs,
    )


class LogprobModel(nn.Module):
    """forward() = reflection-token log-probs, so DDP / FSDP / DeepSpeed see the whole computation."""

    def __init__(self, model: nn.Module, chunk_size: int):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, completion_mask):  # [B, T] each -> [B, T]
        return completion_logprobs(self.model, input_ids, attention_mask, completion_mask, chunk_size=self.chunk_size)


def build_policy(mcfg: ModelConfig, tcfg: TrainConfig, device: torch.device) -> tuple[nn.Module, Any, nn.Module | None]:
    """(trainable model, tokenizer, frozen reference or None). LoRA -> the reference is the model itself
    with adapters disabled, returned as None here (see `reference_context`)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tok = load_for_inference(mcfg, device=device)
    if isinstance(model, PeftModel):
        # continuing from an adapter folder: train that adapter
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    elif tcfg.lora:
        targets: Any = tcfg.lora_target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        model = get_peft_model(model, LoraConfig(
            r=tcfg.lora_r, lora_alpha=tcfg.lora_alpha, lora_dropout=tcfg.lora_dropout,
            target_modules=targets, task_type="CAUSAL_LM",
        ))
    ref = None
    if not is_peft(model) and tcfg.beta > 0:
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if is_peft(model):
            model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    return model, tok, ref


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_logprobs(model: nn.Module, ref: nn.Module | None, chunk_size: int, *batch: torch.Tensor) -> torch.Tensor:
    """Reference log-probs [B, T]: the frozen copy, or the LoRA model with adapters disabled."""
    target = ref if ref is not None else model
    ctx = model.disable_adapter() if ref is None and is_peft(model) else nullcontext()
    with torch.no_grad(), ctx:
        return completion_logprobs(target, *batch, chunk_size=chunk_size)


def save_final(model: nn.Module, tokenizer: Any, folder: Path, merge: bool = False) -> list[Path]:
    """Save the Hugging Face way (atomically): an adapter folder for LoRA (and merged weights on
    request), full weights otherwise. Returns the folders written."""
    from r3rl.io import replace_dir

    written = []
    try:
        with replace_dir(folder) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
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
