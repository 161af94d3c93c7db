"""Mixed precision as the HF Trainer / TRL do it: float32 master weights and optimizer state, forward
passes (training and generation) under bf16 autocast.

The paper trains at lr 5e-7. bf16 has 8 significant bits, so AdamW's ~lr-sized step on a weight of
size ~0.02 rounds away unless the weight it lands on is float32. Measured here on the tiny model
(hidden 32, 1 layer, 3 steps at lr 5e-7): bf16 weights stepped by AdamW in place (the old path,
model.dtype=bfloat16 without autocast) changed 1.2% of the trainable entries (405 of 34,528);
float32 weights under bf16 autocast changed 99.9% (34,508 of 34,528).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

from r3rl.config import ModelConfig, TrainConfig
from r3rl.training.policy import training_dtype
from r3rl.training.trainer import Trainer, resolve_mixed_precision

from tests.trainer_fixtures import tiny_config


def _changed_fraction(base: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> float:
    changed = total = 0
    for k, v in final.items():
        changed += int((v != base[k].to(v.dtype)).sum())
        total += v.numel()
    return changed / total


def _train(cfg) -> Trainer:
    trainer = Trainer(cfg, show_progress=False)
    trainer.train()
    return trainer


def test_bf16_autocast_with_float32_master_weights_learns_at_the_paper_lr(model_dir, tmp_path):
    base = load_file(model_dir / "model.safetensors")
    cfg = tiny_config(model_dir, tmp_path / "mixed", steps=3, learning_rate=5e-7, save_every=0, mixed_precision="bf16")
    trainer = _train(cfg)
    assert trainer.precision == "bf16" and trainer.acc.mixed_precision == "bf16"
    final = load_file(tmp_path / "mixed" / "final" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in final.values())
    state = [s for s in trainer.opt.optimizer.state.values()]
    assert state and all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in state)
    assert _changed_fraction(base, final) > 0.9

    # the old path for contrast: bf16 weights stepped in place (now warned about) lose almost every update
    old = tiny_config(model_dir, tmp_path / "old", steps=3, learning_rate=5e-7, save_every=0, mixed_precision="no")
    old.model.dtype = "bfloat16"
    with pytest.warns(UserWarning, match="round away"):
        _train(old)
    assert _changed_fraction(base, load_file(tmp_path / "old" / "final" / "model.safetensors")) < 0.05


def test_training_forward_and_generation_run_under_autocast(model_dir, tmp_path):
    cfg = tiny_config(model_dir, tmp_path / "run", mixed_precision="bf16")
    trainer = Trainer(cfg, show_progress=False)
    seen: list[tuple[bool, torch.dtype, bool]] = []
    layer = trainer.model.model.layers[0]
    hook = layer.register_forward_pre_hook(
        lambda m, a: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.is_grad_enabled())))
    from r3rl.types import SamplingParams

    trainer.engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2, temperature=1.0, seed=0))
    assert seen and all(on and dtype == torch.bfloat16 and not grad for on, dtype, grad in seen)  # generation
    seen.clear()
    from r3rl.training.grpo import build_completion_batch

    batch = build_completion_batch([[1, 2, 3]], [[4, 5]], trainer.tok.pad_token_id)
    trainer.policy(*batch).sum().backward()
    assert seen == [(True, torch.bfloat16, True)]  # the training forward
    hook.remove()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_precision_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_mixed_precision("auto", cpu) == "no"
    assert resolve_mixed_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_mixed_precision("fp16", cpu)
    full, lora = TrainConfig(lora=False), TrainConfig(lora=True)
    auto, explicit = ModelConfig(dtype="auto"), ModelConfig(dtype="bfloat16")
    # full fine-tuning: float32 master weights whatever the compute dtype
    assert training_dtype(auto, full, "bf16", cuda) == "float32"
    # LoRA: the frozen base in the compute dtype (peft keeps the adapters float32), float32 on CPU
    assert training_dtype(auto, lora, "bf16", cuda) == "bfloat16"
    assert training_dtype(auto, lora, "fp16", cuda) == "float16"
    assert training_dtype(auto, lora, "no", cuda) == "float32"
    assert training_dtype(auto, lora, "bf16", cpu) == "float32"
    assert training_dtype(explicit, full, "no", cuda) == "bfloat16"  # an explicit choice is kept (and warned about)


def test_lora_adapters_stay_float32_over_a_half_precision_base(model_dir):
    from r3rl.training.policy import build_policy

    mcfg = ModelConfig(name_or_path=str(model_dir), dtype="bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no full-fine-tuning warning for LoRA
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations inside peft
        model, _, _ = build_policy(mcfg, TrainConfig(lora=True, lora_r=2, beta=0.0), torch.device("cpu"), "bf16")
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
