"""Sharded full fine-tuning (FSDP2, PyTorch's `fully_shard`, through accelerate's FSDP plugin).

Each rank keeps 1/N of the float32 weights, gradients and AdamW state; a layer's weights are
all-gathered for its forward and backward. Generation cannot run on the sharded model: ranks
decoding different lengths would issue different numbers of all-gathers and hang. So generation
runs on whole weights gathered once per weight sync (as TRL and verl do): with
generation.backend=vllm each rank's engine receives them (`VLLMEngine.sync_weights`, prefix
cache reset), with the hf backend an unsharded generation copy of the model is refreshed from
them (one more copy of the weights per rank, in the training dtype).

accelerate 1.15 enables FSDP and DeepSpeed only on accelerator devices; on CPU (gloo, the CI) its
state stays MULTI_CPU and the plugin is silently dropped. `enable_sharding_on_cpu` sets the fields
accelerate would have set, so the same code path (fsdp2_prepare_model or the DeepSpeed engine, their
state dicts, save_state) runs on CPU.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from r3rl.errors import InputError


def enable_sharding_on_cpu(accelerator: Any) -> None:
    """Under `accelerate launch` with an FSDP or DeepSpeed config on CPU ranks (ACCELERATE_USE_CPU), turn the
    MULTI_CPU state accelerate made (silently dropping the plugin) into FSDP or DEEPSPEED, with the plugin
    accelerate builds from the same environment."""
    from accelerate import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.device.type != "cpu":
        return
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and state.__dict__.get("fsdp_plugin") is None:
        plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* from the environment, as Accelerator does
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        state.fsdp_plugin = plugin
        kind = DistributedType.FSDP
    elif (os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
          and state.__dict__.get("deepspeed_plugins") is None):
        plugin = DeepSpeedPlugin()  # reads ACCELERATE_DEEPSPEED_* from the environment
        plugin.set_mixed_precision(accelerator.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
        kind = DistributedType.DEEPSPEED
    else:
        return
    state.distributed_type = kind
    # as AcceleratorState does on GPUs: every later AcceleratorState() copies the PartialState's type over its own
    PartialState._shared_state["distributed_type"] = kind


def sharding(accelerator: Any) -> str | None:
    """'fsdp2', 'fsdp1', 'zero3' when parameters are split over ranks, else None."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp2" if accelerator.state.fsdp_plugin.fsdp_version == 2 else "fsdp1"
    plugin = accelerator.state.deepspeed_plugin
    return "zero3" if plugin is not None and plugin.zero_stage == 3 else None


def check_supported(kind: str | None, lora: bool) -> None:
    """Refuse, in one sentence, the sharded set-ups r3rl does not run."""
    if kind is None:
        return
    if kind == "fsdp1":
        raise InputError("FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
                         "(configs/accelerate/fsdp2.yaml)")
    if kind == "zero3":
        raise InputError("DeepSpeed ZeRO-3 is not supported (its weights are not gathered for generation); use "
                         "configs/accelerate/fsdp2.yaml for sharded full fine-tuning, or deepspeed-zero2.yaml")
    if lora:
        raise InputError("train.lora=true with FSDP: a LoRA run's frozen base is replicated anyway, so sharding "
                         "gains little; use configs/accelerate/ddp.yaml (FSDP2 is for full fine-tuning)")


def generation_copy(model: nn.Module) -> nn.Module:
    """An unsharded copy of `model` for the hf engine to generate with (before the model is sharded);
    `refresh` keeps it equal to the trained weights."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def refresh(copy_: nn.Module, sharded: nn.Module) -> None:
    """Copy the sharded model's gathered weights into the generation copy (every rank: each tensor is
    all-gathered in turn by the same function that feeds a vLLM engine, `policy_weights`)."""
    from r3rl.engine.vllm import policy_weights

    target = copy_.state_dict()
    for name, t in policy_weights(sharded):
        target[name].copy_(t)
