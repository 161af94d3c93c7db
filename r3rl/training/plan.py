"""`r3rl plan`: before launching a preset, what it needs per device and how long its generation takes.

Everything is computed offline from the preset and the model's config.json (hidden size, layers,
heads, kv heads, head dim, intermediate size, vocabulary, tied embeddings), so a researcher can size
a run without a GPU. Memory is for one process under data parallelism (configs/accelerate/ddp.yaml:
every device holds the whole model) with float32 trainable weights and bf16 compute
(train.mixed_precision); a ZeRO-2 line shows the sharded optimizer state and gradients, and for full
fine-tuning on several processes that data parallelism does not fit, FSDP2 and ZeRO-3 sections show
every part with the parameters sharded too (`sharded_memory`).
Activation and sequence-length figures are upper-bound estimates (every generation at its token
limit); token counts are upper bounds for the same reason. Wall time is generated tokens divided by
the generation speed, which r3rl has not measured on a GPU: pass --tokens-per-s (per device) from
your own `bench/rollout.py` run, otherwise a clearly labelled assumption is used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3rl.config import STAGES, Config
from r3rl.engine.base import prefix_setting, use_shared_prefix
from r3rl.errors import InputError

GIB = 1024 ** 3
# Labelled assumptions (printed with every plan that uses them).
ASSUMED_TOKENS_PER_S = 1000.0  # per device; not a measurement (see the module docstring)
ASSUMED_PROMPT_TOKENS = 150  # the task prompt, templated; an instruction turn (reflect / retry) adds INSTRUCTION_TOKENS
INSTRUCTION_TOKENS = 40
HALF = 2  # bytes of a bf16 / fp16 element
FP32 = 4


@dataclass
class ModelShape:
    """The numbers of a decoder-only transformer that size its memory."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool

    @classmethod
    def from_config(cls, c: dict[str, Any]) -> "ModelShape":
        try:
            hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            return cls(hidden=hidden, layers=int(c["num_hidden_layers"]), heads=heads,
                       kv_heads=int(c.get("num_key_value_heads") or heads),
                       head_dim=int(c.get("head_dim") or hidden // heads),
                       intermediate=int(c["intermediate_size"]), vocab=int(c["vocab_size"]),
                       tied=bool(c.get("tie_word_embeddings", False)),
                       qkv_bias=bool(c.get("attention_bias", c.get("model_type") == "qwen2")))
        except KeyError as e:
            raise InputError(f"the model's config.json has no {e.args[0]}; r3rl plan needs a decoder-only transformer config") from None

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_dim
        attn = self.hidden * q + 2 * self.hidden * kv + q * self.hidden + ((q + 2 * kv) if self.qkv_bias else 0)
        mlp = 3 * self.hidden * self.intermediate  # gate, up, down (SwiGLU)
        return attn + mlp + 2 * self.hidden  # two RMSNorm weights

    def params(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * self.layer_params() + self.hidden  # + final norm

    def lora_params(self, r: int) -> int:
        """Adapter parameters of rank r on every linear layer of the blocks (peft's all-linear; not lm_head)."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_dim, self.hidden, self.intermediate
        shapes = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
        return self.layers * sum(r * (a + b) for a, b in shapes)

    def activation_bytes_per_token_layer(self) -> int:
        """Tensors one block keeps for backward per token, bf16 compute: attention (normed input, q, k, v,
        attention output, o input) + MLP (normed input, gate, up, act, product) + two float32 norm inputs."""
        elems = 4 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate
        return elems * HALF + 2 * self.hidden * FP32


def load_model_shape(cfg: Config, model_config: str | None = None,
                     preset: str | Path | None = None) -> tuple[ModelShape, str]:
    """The model's shape, from the first of: --model-config (a folder or a config.json), the model folder
    (or alias), the config.json a preset carries for its model (`models/<model.name_or_path>/config.json`
    next to the preset file, see configs/models/), the local Hugging Face cache."""
    from r3rl.engine.loading import resolve_model_name

    where = model_config or resolve_model_name(cfg.model.name_or_path)
    candidates = [Path(where).expanduser()]
    if model_config is None and preset is not None and where:
        candidates.append(Path(preset).parent / "models" / where)
    for path in candidates:
        if path.is_dir():
            path = path / "config.json"
        if path.is_file():
            return ModelShape.from_config(json.loads(path.read_text())), str(path)
    try:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(where, local_files_only=True)
    except Exception:
        raise InputError(f"no config.json for {where} on this machine (offline); pass --model-config with a folder "
                         f"or config.json of the model, or put it at configs/models/{where}/config.json") from None
    return ModelShape.from_config(conf.to_dict()), f"{where} (local Hugging Face cache)"


def memory_per_device(cfg: Config, shape: ModelShape, processes: int, prompt_tokens: int) -> dict[str, float]:
    """Bytes per device under data parallelism (every device holds the model), by part."""
    t, g = cfg.train, cfg.generation
    p = shape.params()
    out: dict[str, float] = {}
    if t.lora:
        a = shape.lora_params(t.lora_r)
        out["weights (frozen base, bf16)"] = HALF * p
        out["trainable weights (LoRA adapters, float32)"] = FP32 * a
        trainable = a
    else:
        out["weights = float32 master copy (trained)"] = FP32 * p
        if t.beta > 0:
            out["reference model (frozen float32 copy, beta > 0)"] = FP32 * p
        trainable = p
    out["gradients (float32)"] = FP32 * trainable
    out["optimizer (AdamW, 2 x float32)"] = 2 * FP32 * trainable
    rows = t.micro_batch_size * cfg.rollout.group_size  # reflections back-propagated at once
    lim = {stage: g.sampling(stage).max_new_tokens for stage in STAGES}  # the per-stage token limits
    seq = prompt_tokens + lim["attempt"] + INSTRUCTION_TOKENS + lim["reflection"]
    per_token_layer = shape.activation_bytes_per_token_layer()
    logits = t.logit_chunk_size * shape.vocab * (2 * FP32 + HALF)  # one chunk: float32 logits + grad buffer + bf16 head out
    tokens = training_tokens(cfg, prompt_tokens)  # token positions of a micro-batch's training forward
    full = tokens * (shape.layers * per_token_layer) + logits
    ckpt = tokens * (shape.layers * shape.hidden * HALF + per_token_layer) + logits
    out["activations without gradient checkpointing"] = full
    out["activations with gradient checkpointing"] = ckpt
    gen_len = (prompt_tokens + lim["attempt"] + lim["reflection"] + lim["retry"]
               + 2 * INSTRUCTION_TOKENS)
    kv_tokens = g.max_batch_size * gen_len
    context = prompt_tokens + lim["attempt"] + INSTRUCTION_TOKENS  # what a failure's G reflections share
    if use_shared_prefix(prefix_setting(g.shared_prefix_attention), [[0] * context], cfg.rollout.group_size):
        # Shared-prefix attention: each failure context once (the groups in the slots, one more
        # finishing), each row only its reflection + retry suffix + retry.
        groups = -(-g.max_batch_size // cfg.rollout.group_size) + 1
        kv_tokens = groups * context + g.max_batch_size * (gen_len - context)
        out["_shared"] = 1
    out["KV cache at generation.max_batch_size"] = 2 * shape.layers * shape.kv_dim * HALF * kv_tokens
    out["_rows"], out["_seq"], out["_gen_len"], out["_train_tokens"] = rows, seq, gen_len, tokens
    return out


def sharded_memory(cfg: Config, shape: ModelShape, processes: int, gpu_memory_gb: float) -> dict[str, dict[str, float]]:
    """Bytes per device of full fine-tuning with the parameters sharded over `processes` ranks, by part:
    FSDP2 (configs/accelerate/fsdp2.yaml: float32 parameters, bf16 autocast) and DeepSpeed ZeRO-3 (its
    bf16 mode: bf16 parameters plus float32 master weights and gradient partitions). `_generation_reserved`
    is 1 when generation's memory is vLLM's fixed share (it then holds the KV cache too).

    Gathered: the root module's parameters (embeddings, lm_head, final norm: FSDP2 keeps the root unsharded
    from forward to backward) and two decoder layers (the one computing and the one prefetched), and the
    unsharded gradients of the root and one layer before their reduce-scatter."""
    t, g = cfg.train, cfg.generation
    p, layer = shape.params(), shape.layer_params()
    root = p - shape.layers * layer
    n = max(processes, 1)
    gen: dict[str, float] = {}
    if g.backend == "vllm":
        gen["vLLM (its weights, activations and KV cache: gpu_memory_utilization of the device)"] = (
            g.vllm.gpu_memory_utilization * gpu_memory_gb * 1e9)
        gen["_generation_reserved"] = 1
    else:
        gen["generation copy (unsharded float32, hf backend)"] = FP32 * p
    ref = {"reference model (unsharded float32 copy, beta > 0)": FP32 * p} if t.beta > 0 else {}
    return {
        "fsdp2": {"sharded weights + gradients + AdamW (4 + 4 + 8 bytes per parameter / N)": 16 * p / n,
                  "gathered: root + 2 layers (float32) and their gradients before reduce-scatter":
                      FP32 * (root + 2 * layer) + FP32 * (root + layer),
                  **ref, **gen},
        "zero3": {"sharded bf16 weights + float32 master, gradients, AdamW (2 + 4 + 4 + 8 bytes / N)": 18 * p / n,
                  "gathered: root + 2 layers (bf16) and their gradients before reduce-scatter":
                      HALF * (root + 2 * layer) + HALF * (root + layer),
                  **ref, **gen},
    }


def sharded_lines(cfg: Config, shape: ModelShape, processes: int, gpu_memory_gb: float, activations: float,
                  kv_cache: float) -> list[str]:
    """The plan's lines for FSDP2 and ZeRO-3: each part, and the peak with the configured activations (plus
    the hf engine's KV cache when generation does not run in vLLM's reserved share)."""
    lines = []
    for kind, parts in sharded_memory(cfg, shape, processes, gpu_memory_gb).items():
        reserved = bool(parts.pop("_generation_reserved", 0))
        name = ("fsdp2 (configs/accelerate/fsdp2.yaml)" if kind == "fsdp2"
                else "deepspeed-zero3 (not yet supported by r3rl train: it refuses ZeRO-3; use fsdp2)")
        lines.append(f"  with {name}, parameters sharded over {processes}:")
        for part, b in parts.items():
            lines.append(f"    {part:84s} {b / GIB:8.2f} GiB")
        static = sum(parts.values())
        peak = static + (activations if reserved else max(activations, kv_cache))
        what = "training activations" if reserved else "the larger of training activations and the KV cache"
        fits = "fits" if peak <= gpu_memory_gb * 1e9 else "does NOT fit"
        lines.append(f"    peak (these + {what}): {peak / GIB:.2f} GiB -> {kind} {fits} in {gpu_memory_gb:g} GB")
    return lines


def training_shares_prefix(cfg: Config) -> bool:
    """Whether the training forwards compute each failure context once per group (train.shared_prefix;
    training/prefix_group.py). `auto` is on for a GPU run only with model.attn_implementation=flex_attention,
    the CUDA kernel the exactness tests cover."""
    setting = cfg.train.shared_prefix
    return setting == "on" or (setting == "auto" and cfg.model.attn_implementation == "flex_attention")


def training_tokens(cfg: Config, prompt_tokens: int) -> int:
    """Token positions of one micro-batch's training forward (upper bound): micro_batch_size x G rows of
    context + reflection, or with the shared prefix each group's context once plus its G reflections."""
    t, g, group = cfg.train, cfg.generation, cfg.rollout.group_size
    context = prompt_tokens + g.max_attempt_tokens + INSTRUCTION_TOKENS
    if training_shares_prefix(cfg):
        return t.micro_batch_size * (context + group * g.max_reflection_tokens)
    return t.micro_batch_size * group * (context + g.max_reflection_tokens)


def generated_tokens(cfg: Config) -> dict[str, int]:
    """Upper bounds on generated tokens (every generation at its limit) of each stage."""
    g, r, t, f, e = cfg.generation, cfg.rollout, cfg.train, cfg.failures, cfg.eval
    lim = {stage: g.sampling(stage).max_new_tokens for stage in STAGES}
    # evaluation samples with eval.max_*_tokens where set (as evaluation/accuracy.py's eval_generation does)
    ev = g.with_stages(max_tokens={stage: getattr(e, f"max_{stage}_tokens") for stage in STAGES})
    elim = {stage: ev.sampling(stage).max_new_tokens for stage in STAGES}
    per_reflection = r.rounds * (lim["reflection"] + r.retries_per_reflection * lim["retry"])
    train = t.steps * t.batch_size * r.group_size * per_reflection
    if t.online:
        train += t.steps * t.batch_size * f.attempts_per_example * lim["attempt"]
    per_eval = e.samples_per_example * (elim["attempt"] + elim["reflection"] + elim["retry"]
                                        + (elim["retry"] if e.no_reflection_control else 0))
    evals = math.ceil(t.steps / t.eval_every) if t.eval_every else 0
    return {
        "mining": 0 if t.online else f.num_examples * f.attempts_per_example * lim["attempt"],
        "training": train,
        "periodic evaluation": evals * t.eval_examples * per_eval,
        "evaluation (r3rl eval, once)": e.num_examples * per_eval,
    }


_MEMORY_UNITS = {"": 1e9, "gb": 1e9, "g": 1e9, "gib": GIB, "mb": 1e6, "m": 1e6, "mib": 2 ** 20,
                 "tb": 1e12, "t": 1e12, "tib": 2 ** 40}


def parse_memory(text: str) -> float:
    """A device's memory as typed ("80GB", "24 GiB", "512MB"; a bare number is GB), in GB (1e9 bytes)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m and m.group(2).lower()
    if not m or unit not in _MEMORY_UNITS or float(m.group(1)) <= 0:
        raise InputError(f"--device-memory {text!r} is not a memory size; write it like 80GB, 24GiB or 512MB")
    return float(m.group(1)) * _MEMORY_UNITS[unit] / 1e9


def this_device_memory() -> tuple[float, str]:
    """(GB, what it is) of the device this machine would train on: CUDA device 0's memory when there is
    one, else the CPU's RAM, so a plan on a laptop or a CPU box sizes that machine, not an assumed GPU."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return props.total_memory / 1e9, f"this machine's GPU, {props.name}"
    try:
        import psutil

        total = psutil.virtual_memory().total
    except ImportError:  # psutil comes with accelerate, but stay usable without it
        import os

        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / 1e9, "this machine's CPU RAM, no GPU found"


def _count(n: float) -> str:
    """A count the way model cards write it: 1.54B, 494.0M, 0.9M, 4.3K."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e5:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{n:.0f}"


def _tokens(n: float) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else _count(n)  # large runs keep the aligned 0.655B form


def format_plan(cfg: Config, shape: ModelShape, source: str, processes: int = 1, gpu_memory_gb: float = 80.0,
                tokens_per_s: float | None = None, prompt_tokens: int | None = None,
                device: str | None = None) -> str:
    """`device` says what `gpu_memory_gb` is when it was not typed (e.g. "this machine's CPU RAM")."""
    assumptions = []
    if prompt_tokens is None:
        prompt_tokens = ASSUMED_PROMPT_TOKENS
        assumptions.append(f"the templated task prompt is {ASSUMED_PROMPT_TOKENS} tokens (pass --prompt-tokens)")
    speed_note = ""
    if tokens_per_s is None:
        tokens_per_s = ASSUMED_TOKENS_PER_S
        speed_note = " (ASSUMED)"
        assumptions.append(f"{ASSUMED_TOKENS_PER_S:,.0f} generated tokens/s per device: a placeholder, not a measurement "
                           f"(r3rl's engine has not been timed on a GPU); measure with bench/rollout.py and pass --tokens-per-s")
    mem = memory_per_device(cfg, shape, processes, prompt_tokens)
    rows, seq, gen_len = int(mem.pop("_rows")), int(mem.pop("_seq")), int(mem.pop("_gen_len"))
    train_tokens = int(mem.pop("_train_tokens"))
    shared = bool(mem.pop("_shared", 0))
    t = cfg.train
    lines = [f"r3rl plan: {cfg.model.name_or_path} ({source})",
             f"parameters: {_count(shape.params())} ({shape.params():,}); {shape.layers} layers, hidden {shape.hidden}, "
             f"{shape.heads} heads / {shape.kv_heads} kv heads, intermediate {shape.intermediate}, vocab {shape.vocab}"
             f"{', tied embeddings' if shape.tied else ''}",
             f"{processes} process(es), {_gb(gpu_memory_gb)} GB per device{f' ({device})' if device else ''}; {'LoRA r=' + str(t.lora_r) if t.lora else 'full fine-tuning'}, "
             f"bf16 autocast over float32 trainable weights",
             "", "memory per device (data parallel: every device holds the model)"]
    for name, b in mem.items():
        lines.append(f"  {name:52s} {_bytes(b):>12s}")
    static = sum(b for k, b in mem.items() if not k.startswith(("activations", "KV")))
    act_key = "activations with gradient checkpointing" if t.gradient_checkpointing else "activations without gradient checkpointing"
    peak = static + max(mem[act_key], mem["KV cache at generation.max_batch_size"])
    fits = "fits" if peak <= gpu_memory_gb * 1e9 else "does NOT fit"
    lines.append(f"  peak (static + the larger of training activations ({'with' if t.gradient_checkpointing else 'without'} "
                 f"checkpointing, as configured) and the KV cache): {_bytes(peak)} -> {fits} in {_gb(gpu_memory_gb)} GB")
    if not t.lora and processes > 1:
        z2 = static - (mem["gradients (float32)"] + mem["optimizer (AdamW, 2 x float32)"]) * (1 - 1 / processes)
        lines.append(f"  with deepspeed-zero2 (gradients and optimizer sharded over {processes}): static {_bytes(z2)}")
        if fits != "fits":  # where data parallel does not fit, what sharding the parameters too gives
            lines += sharded_lines(cfg, shape, processes, gpu_memory_gb, mem[act_key],
                                   mem["KV cache at generation.max_batch_size"])
    lines.append(f"  (training forward: micro_batch_size x group_size = {rows} reflections of up to {seq} tokens; "
                 f"generation: {cfg.generation.max_batch_size} rows of up to {gen_len} tokens"
                 + (", each failure context stored once for its group (shared-prefix attention))"
                    if shared else ")"))
    lines.append(f"  (training token positions per micro-batch: {train_tokens:,}"
                 + (f", each failure context once per group (train.shared_prefix; {rows * seq:,} per row))"
                    if training_shares_prefix(cfg) else f"; train.shared_prefix={t.shared_prefix}: per row"
                    + (", as a GPU shares only with model.attn_implementation=flex_attention)" if t.shared_prefix == "auto" else ")")))
    lines += ["", f"generated tokens (upper bounds) and wall time at {tokens_per_s:,.0f} tokens/s per device{speed_note} x {processes}"]
    total_tokens = 0
    for name, n in generated_tokens(cfg).items():
        total_tokens += n
        lines.append(f"  {name:32s} {_tokens(n):>10s} tokens  {_duration(n, tokens_per_s * processes)}")
    lines.append(f"  {'total':32s} {_tokens(total_tokens):>10s} tokens  {_duration(total_tokens, tokens_per_s * processes)}")
    if assumptions:
        lines += ["", "assumptions:"] + [f"  - {a}" for a in assumptions]
    return "\n".join(lines)


def _bytes(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / 2 ** 20:.1f} MiB"  # a tiny model is not "0.00 GiB"


def _gb(gb: float) -> str:
    return f"{gb:g}" if gb == round(gb, 1) else f"{gb:.1f}"  # typed sizes as typed, measured ones to 0.1 GB


def _duration(tokens: float, per_s: float) -> str:
    """Wall time in hours, or minutes / seconds under an hour (a small run is not "0.0 h")."""
    s = tokens / per_s
    if s >= 3600:
        return f"{s / 3600:10.1f} h"
    if s >= 60:
        return f"{s / 60:8.1f} min"
    return f"{s:10.1f} s"
