"""One typed config for every command: dataclasses with defaults and a one-line doc per field.

Loaded from YAML presets (configs/*.yaml) and overridden from the command line with
dotted keys (`train.learning_rate=1e-6`). Unknown keys fail with the closest valid
names; a wrong type or value fails naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from r3rl.errors import InputError, RenamedConfigWarning
from r3rl.types import SamplingParams

# The generation stages of a rollout, in order; each has its own temperature and token limit
# (GenerationConfig.sampling), and top_p / top_k are shared.
STAGES = ("attempt", "reflection", "retry")


class ConfigError(InputError):
    """A bad config file or override; the message names the field."""


# ------------------------------------------------------------------ variants
# The allowed values of every variant field, listed once. str-valued, so a YAML file or a
# command line gives the plain string, a member equals its string (`objective == "reflection"`),
# formats as it (f-strings, JSON) and `to_dict` dumps it back as a string.


class Choice(str, Enum):
    """Base of the variant Enums: a member is its string value wherever a string is used."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls, value: Any, where: str) -> Any:
        """The member named by `value` (a member or its string); a ConfigError naming `where` and the values if none."""
        if isinstance(value, bool) and "on" in cls.values():  # YAML 1.1 reads an unquoted on/off as a bool
            value = "on" if value else "off"
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(cls.values())}") from None


class Objective(Choice):
    """What `train.objective` trains (r3rl/training/objectives.py says how)."""

    REFLECTION = "reflection"  # reflection tokens, rewarded by the retry's success (the paper)
    FIRST_ATTEMPT = "first_attempt"  # first attempts, rewarded by their verdict (plain GRPO)
    RETRY = "retry"  # retry tokens with the reflection in context, rewarded by their verdict
    DISTILL_RETRY = "distill_retry"  # successful retries in the first-attempt context, advantage 1


class AdvantageMode(Choice):
    """How rewards inside a group become advantages (r3rl/training/grpo.py)."""

    NORMALIZED = "normalized"  # (r - mean) / (sample_std + eps)
    MEAN_ONLY = "mean_only"  # r - mean: no std division, which Dr. GRPO shows biases towards easy/hard groups


class LossAggregation(Choice):
    """How per-token losses become one scalar (r3rl/training/grpo.py)."""

    SEQUENCE_MEAN = "sequence_mean"  # mean over each sequence's tokens, then over sequences
    TOKEN_SUM = "token_sum"  # sum over all tokens / a constant: no length bias


class SamplingCorrection(Choice):
    NONE = "none"
    TIS = "tis"  # truncated importance sampling


class Dtype(Choice):
    """Weights' dtype (model.dtype, generation.vllm.dtype)."""

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class MixedPrecision(Choice):
    AUTO = "auto"  # bf16 on CUDA, no elsewhere
    NO = "no"
    BF16 = "bf16"
    FP16 = "fp16"


class Switch(Choice):
    """on, off, or auto (decided per call)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


class CpuMatmul(Choice):
    """How the hf engine multiplies CPU linear layers (r3rl/engine/half_matmul.py)."""

    AUTO = "auto"  # half weights in float32 where this CPU emulates them; wide float32 weights in slabs
    NATIVE = "native"  # PyTorch's kernels as the model calls them
    FLOAT32 = "float32"  # half weights in float32 on every CPU (and wide float32 ones in slabs)


class Backend(Choice):
    HF = "hf"
    VLLM = "vllm"


class Reuse(Choice):
    STRICT = "strict"
    ANY = "any"


class LrScheduler(Choice):
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    CONSTANT = "constant"
    COSINE = "cosine"
    LINEAR = "linear"
    COSINE_WITH_MIN_LR = "cosine_with_min_lr"


@dataclass
class ModelConfig:
    name_or_path: str = ""
    """Hugging Face hub id, local folder (a LoRA adapter folder loads its base too), or a registered model alias."""
    base: str | None = None
    """Base model for an adapter folder, overriding adapter_config.json's base_model_name_or_path."""
    dtype: Dtype = Dtype.AUTO
    """auto (inference: bfloat16 on GPU, float32 on CPU; training: float32 trainable weights, a LoRA base in the mixed-precision dtype), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Allow model code from the hub (only for models you trust)."""
    revision: str = ""
    """Hub revision (branch, tag or commit) of the model; empty = the default branch."""
    attn_implementation: str = ""
    """transformers attention kernel (eager, sdpa, flash_attention_2); empty = transformers' choice."""
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for from_pretrained (e.g. low_cpu_mem_usage: true)."""


@dataclass
class TaskConfig:
    name: str = ""
    """Registered task name (`r3rl tasks`) or import path 'package.module:TaskClass'."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options passed to the task (e.g. path, digits, num_range)."""


@dataclass
class VLLMConfig:
    """Settings of the vLLM backend (generation.backend=vllm; r3rl/engine/vllm.py, docs/vllm.md)."""

    gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM takes for weights, activations and KV cache; training on the same GPU keeps the rest (TRL's colocate default is 0.3)."""
    max_model_len: int = 0
    """Longest prompt + generation vLLM accepts, in tokens (0 = the model's max_position_embeddings); lower it to fit the KV cache."""
    enforce_eager: bool = False
    """Run without torch.compile / CUDA graphs: slower generation, much faster start-up (tests use it)."""
    tensor_parallel_size: int = 1
    """GPUs one vLLM instance shards the model over; weight sync (training) needs 1."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of prompt prefixes, so a retry prefills only its suffix."""
    block_size: int = 0
    """KV-cache block size in tokens: prefix caching reuses whole blocks only (0 = vLLM's default: 128 on CPU, 16 on GPU)."""
    cpu_kvcache_space_gb: int = 0
    """CPU builds: GiB of memory for the KV cache, passed as VLLM_CPU_KVCACHE_SPACE (0 = vLLM's default)."""
    dtype: Dtype = Dtype.AUTO
    """vLLM's weights and activations: float32, bfloat16, float16, or auto = model.dtype (whose auto is bfloat16 on GPU, float32 on CPU, as with the hf backend)."""
    sync_every: int = 1
    """Training: push the policy's weights to vLLM every N optimizer steps (and reset its prefix cache)."""


@dataclass
class GenerationConfig:
    backend: Backend = Backend.HF
    """Generation backend: hf (r3rl's transformers engine, shares the training model's weights) or vllm (see generation.vllm)."""
    max_attempt_tokens: int = 256
    """Token limit of a first attempt."""
    max_reflection_tokens: int = 256
    """Token limit of a reflection."""
    max_retry_tokens: int = 256
    """Token limit of a retry."""
    attempt_temperature: float = 1.0
    """Sampling temperature of first attempts (0 = greedy)."""
    reflection_temperature: float = 1.0
    """Sampling temperature of reflections (0 = greedy)."""
    retry_temperature: float = 1.0
    """Sampling temperature of retries (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold for every stage."""
    top_k: int = 0
    """Top-k sampling for every stage (0 = off)."""
    max_batch_size: int = 64
    """Rows (prompts x samples) generated at once; lower it if generation runs out of memory."""
    shared_prefix_attention: Switch = Switch.AUTO
    """Store a prompt's KV once and let its G rows attend to it together (cascade attention): on, off, or auto (on when a call samples several rows per prompt and prompts average 512 tokens or more)."""
    max_prompt_tokens: int = 0
    """Longest first-attempt prompt (chat template + task + tool schemas) in tokens, checked in mining, evaluation and online training; a longer one stops the run with an error naming the example (0 = no limit)."""
    cpu_matmul: CpuMatmul = CpuMatmul.AUTO
    """hf backend on CPU, how linear layers multiply: auto multiplies bfloat16/float16 weights in float32 on a CPU without bfloat16 units (several times faster than PyTorch's emulation, same results up to summation order) and wide float32 weights (a large-vocabulary LM head) a slab of rows at a time (same values, faster); native keeps PyTorch's kernels; float32 is auto with half weights in float32 on every CPU. Formerly generation.half_matmul."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the vLLM backend (used when backend is vllm)."""

    def sampling(self, stage: str, seed: int | None = None) -> SamplingParams:
        """One stage's sampling settings (attempt, reflection or retry; `STAGES`): the one place the stage ->
        temperature / token limit mapping is written. Rollout, evaluation, objectives, validation and plan read it."""
        if stage not in STAGES:
            raise InputError(f"unknown generation stage {stage!r}; one of {', '.join(STAGES)}")
        limit = {"attempt": self.max_attempt_tokens, "reflection": self.max_reflection_tokens,
                 "retry": self.max_retry_tokens}[stage]
        temperature = {"attempt": self.attempt_temperature, "reflection": self.reflection_temperature,
                       "retry": self.retry_temperature}[stage]
        return SamplingParams(max_new_tokens=limit, temperature=temperature, top_p=self.top_p, top_k=self.top_k,
                              seed=seed)

    def with_stages(self, temperature: float | None = None, top_p: float | None = None,
                    max_tokens: dict[str, int | None] | None = None) -> "GenerationConfig":
        """A copy with every stage's temperature, top_p and some stages' token limits replaced (None: kept)."""
        over: dict[str, Any] = {}
        if temperature is not None:
            over.update({f"{s}_temperature": temperature for s in STAGES})
        if top_p is not None:
            over["top_p"] = top_p
        for stage, limit in (max_tokens or {}).items():
            if stage not in STAGES:
                raise InputError(f"unknown generation stage {stage!r}; one of {', '.join(STAGES)}")
            if limit is not None:
                over[f"max_{stage}_tokens"] = limit
        return dataclasses.replace(self, **over)


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: reflections sampled per failure (one GRPO group)."""
    retries_per_reflection: int = 1
    """Retries per reflection; the reward is their mean pass rate (less variance)."""
    rounds: int = 1
    """Reflect/retry rounds per failure; a later round reflects on the failed retry."""
    include_reason: bool = False
    """Show the verifier's reason in the reflect prompt (the paper tells the model only that it failed)."""
    reflect_instruction: str = ""
    """Reflect prompt; empty = r3rl.environment.prompts.DEFAULT_REFLECT. '{reason}' is replaced by the verifier's reason."""
    retry_instruction: str = ""
    """Retry prompt after a reflection; empty = r3rl.environment.prompts.DEFAULT_RETRY."""
    max_verifier_errors: int = 10
    """Verifier exceptions tolerated (each scored as a failure, counted and logged) before the run stops."""
    retry_no_reflection_instruction: str = ""
    """Retry prompt of the no-reflection control; empty = r3rl.environment.prompts.DEFAULT_RETRY_NO_REFLECTION."""


@dataclass
class FailuresConfig:
    """How failures are found: offline by `r3rl mine` (and by `r3rl train` before it starts when
    the failure set is missing or incomplete), or each step when `train.online` is set."""

    path: str = "runs/failures.jsonl"
    """The failure set (JSONL): `r3rl mine` writes it as it goes and resumes it; `r3rl train` reads it."""
    num_examples: int = 1000
    """Examples of `split` tried (by mining, or drawn from by online training)."""
    attempts_per_example: int = 8
    """k: first attempts sampled per example (rejection sampling; the paper uses up to 64)."""
    max_per_example: int = 1
    """Failed attempts kept per example (each becomes one GRPO group)."""
    split: str = "train"
    """Task split failures come from."""
    chunk_size: int = 64
    """Examples per unit of mining work: each chunk is seeded by itself and processes take chunks in turn (keep it fixed to resume a run)."""
    reuse: Reuse = Reuse.STRICT
    """An existing failure set is resumed or trained on only when what mined it (model weights, task and options, these settings, generation's attempt sampling, seed) matches (strict); `any` uses it as it is, whatever mined it."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    """Run folder: config.yaml, metrics.jsonl, episodes.jsonl, checkpoints, final model."""
    objective: Objective = Objective.REFLECTION
    """What the loss trains (r3rl/training/objectives.py): reflection (the paper), first_attempt (plain GRPO), retry, distill_retry."""
    online: bool = False
    """Draw first attempts from the current policy each step (settings in `failures`) instead of a fixed failure set."""
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 16
    """Failures per optimizer step (the paper: 256); each gives group_size reflections."""
    micro_batch_size: int = 4
    """Failures rolled out and back-propagated at once (gradient accumulation up to batch_size)."""
    learning_rate: float = 1e-5
    """Peak learning rate (paper, full fine-tuning 1.5B-8B: 5e-7)."""
    lr_scheduler: LrScheduler = LrScheduler.CONSTANT_WITH_WARMUP
    """transformers scheduler name: constant_with_warmup, cosine, linear, constant."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.99
    """AdamW beta2."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""
    beta: float = 0.001
    """KL weight to the reference model (paper: 0.001); 0 drops the reference."""
    clip_eps: float = 0.2
    """PPO clip range below 1."""
    clip_eps_high: float = 0.0
    """PPO clip range above 1 (0 = same as clip_eps)."""
    advantage: AdvantageMode = AdvantageMode.NORMALIZED
    """normalized: (r - mean) / (std + eps), as GRPO; mean_only: r - mean, as Dr. GRPO."""
    loss_aggregation: LossAggregation = LossAggregation.SEQUENCE_MEAN
    """sequence_mean: mean over each reflection's tokens, then over reflections (GRPO); token_sum: token sum / constant (Dr. GRPO)."""
    updates_per_batch: int = 1
    """Optimizer passes over each rollout batch (>1: PPO's old log-probs are a no-grad training forward before the first pass)."""
    sampling_correction: SamplingCorrection = SamplingCorrection.NONE
    """none, or tis: weight each reflection token's policy term by min(exp(training - sampling log-prob), cap) (TRL's vllm_importance_sampling_correction); needs generation.reflection_temperature 0 or 1."""
    sampling_correction_cap: float = 2.0
    """Upper bound of the truncated importance-sampling weight (train.sampling_correction=tis)."""
    lora: bool = True
    """Train a LoRA adapter (reference = base with adapters off) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: str = "all-linear"
    """peft target_modules: 'all-linear' or a comma-separated list of module names."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    logit_chunk_size: int = 256
    """Reflection positions per LM-head chunk (bounds the logits' memory)."""
    shared_prefix: Switch = Switch.AUTO
    """auto | on | off: each group's common context is computed once in training forwards and backwards (training/prefix_group.py); auto = on where tested."""
    eval_every: int = 0
    """Evaluate acc@1 / acc@2 on held-out examples every N steps (0 = off)."""
    eval_examples: int = 100
    """Held-out examples in periodic evaluation."""
    save_every: int = 50
    """Write a checkpoint every N steps (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest removed)."""
    log_every: int = 1
    """Print a line of the step's metrics (reward, retry success, zero-advantage share, KL, reflection length, time, tokens/s) every N steps (0 = none; metrics.jsonl has every step either way)."""
    log_episodes_per_step: int = 4
    """Whole episodes written to episodes.jsonl per step, for reading (training uses every episode)."""
    merge_adapter: bool = False
    """Also save merged full weights at the end of a LoRA run."""
    report_to: list[str] = field(default_factory=list)
    """accelerate trackers: tensorboard, wandb."""
    push_to_hub: bool = False
    """Upload the final model folder (with its model card) to the Hugging Face Hub as train.hub_model_id."""
    hub_model_id: str = ""
    """Hub repo for push_to_hub, 'user/model-name' (created if missing; credentials from `hf auth login` or HF_TOKEN)."""
    deterministic: bool = False
    """torch deterministic algorithms (for exact resume tests; slower)."""
    mixed_precision: MixedPrecision = MixedPrecision.AUTO
    """no, bf16, fp16 or auto (bf16 on CUDA, no elsewhere): forward passes under autocast; trainable weights and optimizer state stay float32."""
    overwrite_output_dir: bool = False
    """Start a fresh run in an output_dir that holds an older run's checkpoints or metrics (deleting them); else that stops with an error."""
    collective_timeout_s: float = 1800.0
    """Many processes: seconds a rank waits in a collective (torch.distributed's process-group timeout) before a rank that stopped responding ends the run with a message; it must cover the slowest rank's rollouts and a checkpoint save."""


@dataclass
class EvalConfig:
    num_examples: int = 200
    """Held-out examples."""
    samples_per_example: int = 1
    """Independent first attempts (each with its own reflection and retry) per example."""
    split: str = "test"
    """Task split to evaluate on."""
    output_dir: str = "runs/eval"
    """Where results.json and episodes.jsonl go."""
    no_reflection_control: bool = True
    """Also measure a second try without reflection (only told to try again)."""
    chunk_size: int = 64
    """Examples per unit of evaluation work (seeded by its offset; processes take chunks in turn; episodes are saved per chunk)."""
    temperature: float | None = None
    """Sampling temperature of every evaluation stage (0 = greedy); unset = the generation section's per-stage temperatures. The paper states no evaluation sampling settings."""
    top_p: float | None = None
    """Nucleus threshold during evaluation; unset = generation.top_p."""
    max_attempt_tokens: int | None = None
    """Token limit of an evaluated first attempt; unset = generation.max_attempt_tokens."""
    max_reflection_tokens: int | None = None
    """Token limit of an evaluated reflection; unset = generation.max_reflection_tokens."""
    max_retry_tokens: int | None = None
    """Token limit of an evaluated retry (and of the control's retry); unset = generation.max_retry_tokens."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    failures: FailuresConfig = field(default_factory=FailuresConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    """Seed of every random choice (data order, sampling, initialisation)."""


# String fields with a fixed set of values that are not a Choice (above) yet; a variant field is better typed by one.
_CHOICES: dict[str, tuple[str, ...]] = {}
# train.objective -> the generation stage whose samples it trains (TrainingObjective.stage; kept here so
# validating a config needs no torch import; tests/test_objectives.py checks the two agree).
OBJECTIVE_STAGES = {Objective.REFLECTION: "reflection", Objective.FIRST_ATTEMPT: "attempt", Objective.RETRY: "retry",
                    Objective.DISTILL_RETRY: "retry"}
# Objectives whose advantages are normalised within each group of rollout.group_size samples (a group of
# one always has advantage 0); distill_retry gives every kept retry advantage 1 (objectives.py).
GROUP_NORMALISED_OBJECTIVES = (Objective.REFLECTION, Objective.FIRST_ATTEMPT, Objective.RETRY)
_POSITIVE = {
    "train.steps", "train.batch_size", "train.micro_batch_size", "rollout.group_size", "rollout.rounds",
    "rollout.retries_per_reflection", "failures.attempts_per_example", "eval.samples_per_example",
    "generation.max_attempt_tokens", "generation.max_reflection_tokens", "generation.max_retry_tokens",
    "generation.max_batch_size", "train.updates_per_batch", "failures.chunk_size", "eval.chunk_size", "train.logit_chunk_size", "failures.max_per_example", "failures.num_examples",
}


# Old names -> new names, accepted with a warning for one release (removed in 0.3).
_RENAMED_KEYS = {
    "mine.output": "failures.path",
    "train.failures": "failures.path",
    "mine.num_examples": "failures.num_examples",
    "mine.attempts_per_example": "failures.attempts_per_example",
    "mine.max_failures_per_example": "failures.max_per_example",
    "mine.split": "failures.split",
    "train.episodes_per_step": "train.log_episodes_per_step",
    "generation.half_matmul": "generation.cpu_matmul",
}
_RENAMED_VALUES = {
    "train.advantage": {"grpo": "normalized", "dr_grpo": "mean_only"},
    "train.loss_aggregation": {"grpo": "sequence_mean", "dr_grpo": "token_sum"},
}


def _deprecated(message: str) -> None:
    # FutureWarning, not DeprecationWarning: Python hides the latter from command-line users.
    warnings.warn(message + " (the old spelling is removed in r3rl 0.3)", RenamedConfigWarning, stacklevel=3)


def _rename_key(dotted: str, value: Any) -> tuple[str, Any]:
    new = _RENAMED_KEYS.get(dotted)
    if new is not None:
        if dotted == "train.failures" and value in ("", None):
            return "", None  # the old "empty = mine into output_dir" default: failures.path already says where
        _deprecated(f"config key '{dotted}' is now '{new}'")
        dotted = new
    renames = _RENAMED_VALUES.get(dotted, {})
    if isinstance(value, str) and value in renames:
        _deprecated(f"{dotted}: value '{value}' is now '{renames[value]}'")
        value = renames[value]
    return dotted, value


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Rewrite old keys and values of a raw YAML mapping to today's names."""
    out: dict[str, Any] = {}
    for section, body in data.items():
        if not isinstance(body, dict) or section not in ("mine", "train", "failures", "generation"):
            out[section] = body
            continue
        for key, value in body.items():
            dotted, value = _rename_key(f"{section}.{key}", value)
            if not dotted:
                continue
            new_section, new_key = dotted.split(".", 1)
            out.setdefault(new_section, {})[new_key] = value
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Field -> the docstring written under it (used by `--help` and `r3rl config`)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[prev.target.id] = str(node.value.value).strip()  # type: ignore[attr-defined]
    return docs


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert: int -> float, str from the CLI) a value against a field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Choice):
        return tp.parse(value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        kind = "an integer" if tp is int else "a number"
        allowed = (int, str) if tp is int else (int, float, str)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ConfigError(f"{where}: expected {kind}, got {value!r}")
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted on/off/yes/no as a bool
            return "on" if value else "off"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Valid keys: {', '.join(valid)}."
    return ConfigError(f"unknown config key '{where}{key}'.{hint}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(key, list(fields), prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def validate_training(cfg: Config) -> Config:
    """Checks that only training needs (eval and mining never read them): `r3rl train` and `r3rl.train` run them."""
    if cfg.rollout.group_size < 2 and cfg.train.objective in GROUP_NORMALISED_OBJECTIVES:
        raise ConfigError(f"rollout.group_size: must be at least 2 for train.objective={cfg.train.objective}, got "
                          f"{cfg.rollout.group_size} (advantages are normalised within each group, so a group of one "
                          "never has a learning signal)")
    return cfg


def validate(cfg: Config) -> Config:
    """Value checks that types alone cannot express."""
    _parse_choices(cfg, "")
    flat = to_dict(cfg)
    for dotted, choices in _CHOICES.items():
        section, name = dotted.split(".")
        value = flat[section][name]
        if value not in choices:
            raise ConfigError(f"{dotted}: {value!r} is not one of {', '.join(choices)}")
    for dotted in _POSITIVE:
        section, name = dotted.split(".")
        if flat[section][name] < 1:
            raise ConfigError(f"{dotted}: must be at least 1, got {flat[section][name]}")
    if cfg.train.batch_size % cfg.train.micro_batch_size:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) must be a multiple of train.micro_batch_size "
            f"({cfg.train.micro_batch_size})"
        )
    if cfg.train.learning_rate <= 0:
        raise ConfigError(f"train.learning_rate: must be positive, got {cfg.train.learning_rate}")
    if cfg.train.collective_timeout_s <= 0:
        raise ConfigError(f"train.collective_timeout_s: must be > 0, got {cfg.train.collective_timeout_s}")
    if cfg.train.beta < 0:
        raise ConfigError(f"train.beta: must be >= 0, got {cfg.train.beta}")
    if cfg.train.sampling_correction_cap <= 0:
        raise ConfigError(f"train.sampling_correction_cap: must be > 0, got {cfg.train.sampling_correction_cap}")
    stage = OBJECTIVE_STAGES[cfg.train.objective]
    temperature = cfg.generation.sampling(stage).temperature
    if cfg.train.sampling_correction == "tis" and temperature not in (0, 1):
        raise ConfigError("train.sampling_correction=tis compares the engine's log-probs, taken at temperature 1, with the "
                          f"training forward's at generation.{stage}_temperature={temperature}; "
                          "set it to 1 (or 0) or train.sampling_correction=none")
    for stage in STAGES:
        if cfg.generation.sampling(stage).temperature < 0:
            raise ConfigError(f"generation.{stage}_temperature: must be >= 0")
    if not 0 < cfg.generation.top_p <= 1:
        raise ConfigError(f"generation.top_p: must be in (0, 1], got {cfg.generation.top_p}")
    vc = cfg.generation.vllm
    if not 0 < vc.gpu_memory_utilization <= 1:
        raise ConfigError(f"generation.vllm.gpu_memory_utilization: must be in (0, 1], got {vc.gpu_memory_utilization}")
    for name in ("max_model_len", "block_size", "cpu_kvcache_space_gb"):
        if getattr(vc, name) < 0:
            raise ConfigError(f"generation.vllm.{name}: must be >= 0 (0 = vLLM's default), got {getattr(vc, name)}")
    for name in ("tensor_parallel_size", "sync_every"):
        if getattr(vc, name) < 1:
            raise ConfigError(f"generation.vllm.{name}: must be at least 1, got {getattr(vc, name)}")
    if cfg.generation.max_prompt_tokens < 0:
        raise ConfigError(f"generation.max_prompt_tokens: must be >= 0 (0 = no limit), got {cfg.generation.max_prompt_tokens}")
    ev = cfg.eval
    if ev.temperature is not None and ev.temperature < 0:
        raise ConfigError(f"eval.temperature: must be >= 0, got {ev.temperature}")
    if ev.top_p is not None and not 0 < ev.top_p <= 1:
        raise ConfigError(f"eval.top_p: must be in (0, 1], got {ev.top_p}")
    for stage in STAGES:
        limit = getattr(ev, f"max_{stage}_tokens")
        if limit is not None and limit < 1:
            raise ConfigError(f"eval.max_{stage}_tokens: must be at least 1 (or unset), got {limit}")
    if cfg.train.push_to_hub and not cfg.train.hub_model_id:
        raise ConfigError("train.push_to_hub needs train.hub_model_id (the Hub repo, e.g. 'user/model-name')")
    return cfg


def _parse_choices(section: Any, prefix: str) -> None:
    """Every variant field of a (possibly hand-built) config as its Choice member; a ConfigError names a bad one."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, tp = getattr(section, f.name), hints[f.name]
        if dataclasses.is_dataclass(value):
            _parse_choices(value, f"{prefix}{f.name}.")
        elif isinstance(tp, type) and issubclass(tp, Choice):
            setattr(section, f.name, tp.parse(value, f"{prefix}{f.name}"))


def _plain(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, Choice) else v for k, v in pairs}


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML/JSON data: variant fields as their strings."""
    return dataclasses.asdict(cfg, dict_factory=_plain)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Place an override into the raw mapping, checking the path against the dataclasses."""
    parts = dotted.split(".")
    cls: Any = Config
    node = data
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise _unknown(part, names, ".".join(parts[:i]) + ("." if i else ""))
        tp = typing.get_type_hints(cls)[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                first = dataclasses.fields(tp)[0].name
                raise ConfigError(f"{dotted} is a section; set one of its fields, e.g. {dotted}.{first}=...")
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # the YAML file set the section to a value
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: expected a section (a mapping), got {node!r}")
            cls = tp
        elif typing.get_origin(tp) is dict and not last:
            # task.options.path=... : free-form options, YAML-parsed values
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: expected a mapping, got {node!r}")
            node[".".join(parts[i + 1:])] = value
            return
        else:
            if not last:
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
            node[part] = value
            return


def parse_override(text: str) -> tuple[str, Any]:
    """'train.learning_rate=1e-6' -> ('train.learning_rate', 1e-06); values parse as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _yaml_error(path: Path, e: yaml.YAMLError) -> str:
    """'FILE, line 4, column 2: invalid YAML (expected ..., while parsing ...)': the file with its place
    once; str(e) names "<unicode string>" and repeats the lines it quotes."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    what = "; ".join(str(x) for x in (getattr(e, "problem", None), getattr(e, "context", None)) if x)
    return f"{where}: invalid YAML ({what or type(e).__name__})"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated."""
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.exists():
            from r3rl.runtime.file_checks import relative_note

            raise ConfigError(f"config file not found: {path}{relative_note(path)}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_error(path, e)) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        sections = {f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.type) or
                    dataclasses.is_dataclass(typing.get_type_hints(Config).get(f.name))}
        for key, value in data.items():
            if key in sections and value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path}: {key}: expected a section (a mapping), got {value!r}")
    data = _upgrade(data)
    if path:
        try:  # blame the file only for what the file says
            _build(Config, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for text in overrides or []:
        key, value = _rename_key(*parse_override(text))
        if key:
            try:
                _set_dotted(data, key, value)
                _build(Config, copy.deepcopy(data))
            except ConfigError as e:
                raise ConfigError(f"command-line override {text!r}: {e}") from None
    try:
        return validate(_build(Config, data))
    except ConfigError as e:
        where = f"{path} with the command-line overrides" if path and overrides else (path or "")
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe_fields(cfg: Config | None = None) -> list[tuple[str, str, str]]:
    """(dotted name, value, one-line doc) of every field, in declaration order: `r3rl config --docs`."""
    cfg = cfg or Config()
    rows: list[tuple[str, str, str]] = [("seed", repr(cfg.seed), field_docs(Config)["seed"])]
    for section in dataclasses.fields(Config):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        rows.extend(_describe_section(section.name, value))
    return rows


def _describe_section(prefix: str, value: Any) -> list[tuple[str, str, str]]:
    """Rows of one section; a nested section (generation.vllm) lists its own fields under its dotted name."""
    rows: list[tuple[str, str, str]] = []
    docs = field_docs(type(value))
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if dataclasses.is_dataclass(item):
            rows.extend(_describe_section(f"{prefix}.{f.name}", item))
            continue
        if isinstance(item, Choice):
            item = item.value
        rows.append((f"{prefix}.{f.name}", yaml.safe_dump(item, default_flow_style=True).strip()
                     .removesuffix("\n...").removesuffix("..."), docs.get(f.name, "")))
    return rows
