"""Reflection-only GRPO: the training recipe (train.objective=reflection, the default; the
baselines of training/objectives.py change only which rollouts and rows steps 2-5 use).

Each optimizer step:
  1. take `batch_size` failed first attempts (failures.py: a mined failure set, or drawn online
     from the policy);
  2. for each, sample G reflections and a retry after each (one batched engine call, the retry
     continuing from the reflection's KV cache);
  3. reward = the retry passes the verifier (mean over retries when there are several);
  4. advantages are normalised inside each group of G; groups whose rewards are all equal carry
     no signal: their policy term is zero, so without a KL term they leave the loss (their share is
     logged, and a run where no group has signal warns); a micro-batch left with no row back-propagates
     an exact zero, so every rank issues the same collectives (training/agreement.py);
  5. loss = clipped GRPO surrogate + beta * k3 KL, on the reflection tokens only (the task,
     the failed attempt and the retry get no gradient), accumulated over micro-batches with
     accelerate's `accumulate()` (so DDP, DeepSpeed and FSDP all see the same step boundaries);
  6. one optimizer step; the hf engine shares the model object, so its weights are current at once;
     vLLM gets them every generation.vllm.sync_every steps (docs/design.md, "The log-prob contract").

The recipe: `Trainer.__init__` only composes named setup steps, each built from its config
section (processes and precision; policy and optimizer; rollout; resume; failure source;
trackers), and `Trainer.train` is the loop above, one named piece per line.

Deliberate choices: the loss is normalised by the *global* number of reflections in the step
(batch_size x G), a constant, so micro-batches and ranks need no communication to agree on it
and skipped groups do not inflate the rest; sampling seeds derive from (seed, step, micro-batch),
so a resumed run and a run on another number of processes roll out the same episodes.
The objective (`train.objective`, training/objectives.py) makes each micro-batch's rollouts and
turns them into loss rows (context, completion, reward, group); the loop is the same for all.
Precision as the HF Trainer / TRL: float32 trainable weights and optimizer state, forward passes
(training, reference, and generation) under `train.mixed_precision` autocast.
Log-probs (docs/design.md, "The log-prob contract"): the training forward's are of softmax(logits / T)
at the trained stage's temperature T (without top-k / top-p truncation). PPO's "old" log-probs are that same forward before the
step's first update (the first pass's own forward, detached; with several updates per batch a
no-grad forward before the first pass), so the first pass's ratio is 1. The engine's sampling
log-probs (`Episode.reflection_logprobs`, of log_softmax(logits) at temperature 1)
are compared with the old ones when T is 1 (or 0, greedy): their mismatch is logged
(`logprob_diff_mean` / `_max`) and, with `train.sampling_correction=tis`, each token's policy term
is weighted by min(exp(old - sampling), train.sampling_correction_cap), as TRL's
vllm_importance_sampling_correction. It is off by default: with the hf engine (the training
weights themselves, under the same autocast) the mismatch measured on a 2-layer test model was
2e-7 mean / 1e-6 max per token in float32 and 3e-4 / 2e-3 under bf16 autocast, weights within
0.2% of 1; a backend with its own kernels (vLLM) is where it matters.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import parse_flag_from_env, set_seed
from transformers import get_scheduler

from r3rl.config import Config, dump_config, to_dict, validate_training
from r3rl.environment.rollout import derive_seed
from r3rl.environment.stack import build_rollout
from r3rl.errors import InputError
from r3rl.evaluation.accuracy import evaluate_model
from r3rl.evaluation.diagnostics import reflection_diagnostics
from r3rl.runtime.io import JsonlWriter, atomic_write_text, iter_jsonl, truncate_partial_tail, write_json
from r3rl.runtime.progress import progress_bar
from r3rl.tasks import load_task
from r3rl.training import grpo
from r3rl.training.agreement import Agreement, lost_ranks, process_group_timeout
from r3rl.training.checkpoint import (adapter_only_state_hooks, check_resume_step, latest_checkpoint, load_checkpoint,
                                      prepare_output_dir, record_final_weights, save_checkpoint)
from r3rl.training.failures import FailureSource, build_failure_source
from r3rl.training.console import eval_line, step_line
from r3rl.training.metrics import MAX_KEYS, SUM_KEYS, MetricsRow
from r3rl.training.objectives import Row, build_objective
from r3rl.training.policy import LogprobModel, build_policy, is_peft, reference_logprobs, save_final
from r3rl.training.sharding import check_supported, enable_sharding_on_cpu, generation_copy, refresh, sharding
from r3rl.training.tracking import log_episode_texts
from r3rl.types import Episode

NO_SIGNAL_WARN_STEPS = 3  # consecutive steps in which no group had signal before the run warns


class NoLearningSignalWarning(UserWarning):
    """Every GRPO group of several steps had equal rewards: the policy term of the loss is zero."""


def resolve_mixed_precision(value: str, device: torch.device) -> str:
    """`auto` -> bf16 on a CUDA device that supports it, else no (on CPU bf16 matmuls are very slow)."""
    if value == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if value == "fp16" and device.type != "cuda":
        raise InputError(f"train.mixed_precision=fp16 needs a CUDA device (this process runs on {device.type}); use bf16 or no")
    return value


def accumulation_steps(batch_size: int, micro_batch_size: int, processes: int) -> int:
    """Micro-batches each process back-propagates per optimizer step: batch_size / (micro_batch_size x processes)."""
    micro_per_step = batch_size // micro_batch_size
    if batch_size % micro_batch_size or micro_per_step % processes:
        raise InputError(
            f"train.batch_size ({batch_size}) must be a multiple of train.micro_batch_size ({micro_batch_size}) x the "
            f"number of processes ({processes})"
        )
    return micro_per_step // processes


def _check_launcher_env(accum: int) -> None:
    """accelerate lets ACCELERATE_GRADIENT_ACCUMULATION_STEPS (set from an accelerate yaml) override the
    value passed to Accelerator; r3rl derives it from the config, so a different number there is a mistake."""
    env = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if env and env.isdigit() and int(env) != accum:
        raise InputError(
            f"the accelerate config sets gradient_accumulation_steps={env}, but r3rl derives {accum} from "
            f"train.batch_size / (train.micro_batch_size x processes); remove it from the accelerate config"
        )


def _forget_accelerator_state() -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
    mixed precision; a Trainer owns its process's training state, so a later Trainer in the same process
    (tests, notebooks, the demo) starts from a clean one. The process group (PartialState) is kept."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


@dataclass
class _Micro:
    """One micro-batch of episodes, laid out for the loss."""

    episodes: list[Episode]
    stats: dict[str, float]
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # input_ids, attention_mask, completion_mask [B, T]
    advantages: torch.Tensor | None  # [B] of the rows in `batch`
    sampling_logp: torch.Tensor | None = None  # [B, T] the engine's log-probs of the rows' reflection tokens
    groups: torch.Tensor | None = None  # [B] group of each row: the shared-prefix layout (train.shared_prefix), else None


class StepTotals:
    """Sums (SUM_KEYS) and maxima (MAX_KEYS) of one step's micro-batch stats, on this rank then over all."""

    def __init__(self) -> None:
        self.sums = torch.zeros(len(SUM_KEYS), dtype=torch.float64)
        self.maxes = torch.zeros(len(MAX_KEYS), dtype=torch.float64)  # of non-negative values

    def add(self, stats: dict[str, float]) -> None:
        self.sums += torch.tensor([float(stats.get(k, 0.0)) for k in SUM_KEYS], dtype=torch.float64)
        self.maxes = torch.maximum(self.maxes, torch.tensor([float(stats.get(k, 0.0)) for k in MAX_KEYS],
                                                            dtype=torch.float64))

    def reduced(self, accelerator: Any) -> dict[str, float]:
        """Every rank's totals combined (a collective: every rank calls it)."""
        dev = accelerator.device
        sums = accelerator.reduce(self.sums.to(dev), reduction="sum").cpu().tolist()
        maxes = accelerator.reduce(self.maxes.to(dev), reduction="max").cpu().tolist()
        return dict(zip(SUM_KEYS, sums)) | dict(zip(MAX_KEYS, maxes))


class Trainer:
    """`r3rl train` as a recipe: __init__ composes the setup steps, train() runs the loop."""

    def __init__(self, cfg: Config, resume: bool | str = False, show_progress: bool = True):
        self.cfg = validate_training(cfg)
        self.out = Path(cfg.train.output_dir)
        self.engine = None
        self._setup_processes(resume, show_progress)
        self._setup_policy()
        self._setup_rollout()
        try:  # from here on an error closes the engine just opened (a vLLM engine must be shut down)
            self.start_step = self._setup_resume(resume)
            if self.start_step:
                self._sync_generation_weights()  # a vLLM engine loaded the base weights, not the checkpoint's
            self._setup_trackers()
            self.failures: FailureSource = build_failure_source(cfg, self.rollout, self.micro_per_step, accelerator=self.acc,
                                                                show_progress=self.show_progress, log=self.log)
        except BaseException:
            self.close()
            raise
        self._no_signal_steps = 0
        self._warned_no_signal = False

    # ------------------------------------------------------------------ setup steps
    def _setup_processes(self, resume: bool | str, show_progress: bool) -> None:
        """train: the process group, micro-batches per step, precision, the run folder, the Accelerator, seeds."""
        tcfg = self.cfg.train
        # The process group, which the Accelerator below reuses; ACCELERATE_USE_CPU must reach it as it
        # would through AcceleratorState, or `accelerate launch` CPU ranks each start a group of one.
        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"),
                             timeout=process_group_timeout(tcfg.collective_timeout_s))
        self.world = state.num_processes
        accum = accumulation_steps(tcfg.batch_size, tcfg.micro_batch_size, self.world)
        self.micro_per_step = accum * self.world
        _check_launcher_env(accum)
        self.precision = resolve_mixed_precision(tcfg.mixed_precision, state.device)
        prepare_output_dir(self.out, bool(resume), tcfg.overwrite_output_dir, state.is_main_process)
        check_resume_step(self.out, resume, tcfg.steps)
        state.wait_for_everyone()
        _forget_accelerator_state()
        self.acc = Accelerator(log_with=tcfg.report_to or None, project_dir=str(self.out),
                               mixed_precision=self.precision, gradient_accumulation_steps=accum)
        enable_sharding_on_cpu(self.acc)
        check_supported(sharding(self.acc), tcfg.lora)
        set_seed(self.cfg.seed)
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.show_progress = show_progress and self.acc.is_main_process
        self.agree = Agreement(self.acc.process_index, self.world, self.acc.device, self.out)

    def _setup_policy(self) -> None:
        """model + train: the trained model, its reference, AdamW, the LR schedule, DeepSpeed's fill-ins."""
        cfg, tcfg = self.cfg, self.cfg.train
        self.task = load_task(cfg.task.name, **cfg.task.options)
        self.model, self.tok, self.ref = build_policy(cfg.model, tcfg, self.acc.device, self.precision)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise InputError("no trainable parameters (check train.lora / the adapter)")
        opt = torch.optim.AdamW(params, lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                weight_decay=tcfg.weight_decay)
        # Not passed to accelerate.prepare: its wrapper would step the schedule once per process. Its state
        # goes into trainer_state.json (JSON), not accelerate's custom-object pickle, which accelerate loads
        # with weights_only=False: a checkpoint must never run code.
        self.scheduler = get_scheduler(tcfg.lr_scheduler, opt, num_warmup_steps=tcfg.warmup_steps,
                                       num_training_steps=tcfg.steps)
        self._configure_deepspeed()
        # log-probs of the distribution the trained completions (reflections by default) are sampled from
        self.objective = build_objective(tcfg.objective)
        self.temperature = self.objective.temperature(cfg.generation)
        # FSDP2: the hf engine generates with an unsharded copy, refreshed from the gathered weights (sharding.py)
        self.gen_model = (generation_copy(self.model) if self._sharded() and cfg.generation.backend == "hf"
                          else self.model)
        self.policy, self.opt = self.acc.prepare(LogprobModel(self.model, tcfg.logit_chunk_size, self.temperature), opt)
        self._setup_shared_prefix()
        if is_peft(self.model):
            adapter_only_state_hooks(self.acc, lambda m: m is self.policy)

    def _setup_shared_prefix(self) -> None:
        """train.shared_prefix: each group's common context computed once (training/prefix_group.py)."""
        from r3rl.training import prefix_group

        self.shared_prefix, reason = prefix_group.resolve(self.cfg.train.shared_prefix, self.model, self.acc.device,
                                                          deepspeed=self.acc.state.deepspeed_plugin is not None,
                                                          sharded=self._sharded())
        if reason:
            self.log(f"train.shared_prefix=auto: per-row training forwards ({reason})")
        self._phase = dict.fromkeys(("policy", "reference", "optimizer"), 0.0)  # seconds of this step, by phase

    def _timed(self, phase: str, t0: float) -> None:
        """Add the seconds since t0 to `phase` (after the device's queued work has run)."""
        if self.acc.device.type == "cuda":
            torch.cuda.synchronize(self.acc.device)
        self._phase[phase] += time.perf_counter() - t0

    def _configure_deepspeed(self) -> None:
        """Fill what DeepSpeed needs and r3rl knows (nothing to copy into the accelerate yaml by hand):
        the micro-batch (no dataloader is prepared) and the clipping norm; the accumulation count
        reaches it from the Accelerator."""
        plugin = self.acc.state.deepspeed_plugin
        if plugin is None:
            return
        conf, tcfg = plugin.deepspeed_config, self.cfg.train
        if conf.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            conf["train_micro_batch_size_per_gpu"] = tcfg.micro_batch_size
        if conf.get("gradient_clipping", "auto") == "auto":
            conf["gradient_clipping"] = tcfg.max_grad_norm

    def _setup_rollout(self) -> None:
        """generation + rollout: the engine generates with the policy object itself, under the training
        forward's autocast, so weights are current after every optimizer step (under FSDP2 with an unsharded
        copy, refreshed by _sync_generation_weights)."""
        self.rollout = build_rollout(self.cfg, task=self.task, model=self.gen_model, tokenizer=self.tok,
                                     autocast=self.acc.autocast)
        self.engine = self.rollout.engine

    def _setup_resume(self, resume: bool | str) -> int:
        """The step to start from: 0, or the checkpoint's (its weights, optimizer and schedule loaded)."""
        if not resume:
            return 0
        ckpt = latest_checkpoint(self.out) if resume is True else Path(resume)
        if ckpt is None:
            # A run stopped before its first checkpoint: --resume starts it again from step 0 (its
            # log lines are dropped in train()), so one command continues a run whatever point it reached.
            self.log(f"--resume: no checkpoint yet in {self.out / 'checkpoints'}; starting from step 0")
            return 0
        state = load_checkpoint(self.acc, ckpt)
        step = int(state["step"])
        self.scheduler.load_state_dict(state.get("scheduler") or _stepped(self.scheduler, step))
        self.log(f"resumed from {ckpt} at step {step}")
        return step

    def _setup_trackers(self) -> None:
        """The resolved config in the run folder, and once to every tracker of train.report_to."""
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", dump_config(self.cfg))
        if self.cfg.train.report_to:
            self.acc.init_trackers("r3rl", config=_flat(to_dict(self.cfg)))

    def log(self, msg: str) -> None:
        if self.acc.is_main_process:
            print(msg, flush=True)

    # ------------------------------------------------------------------ one micro-batch
    def _rollouts(self, step: int) -> list[list[Episode]]:
        """Episodes of this rank's micro-batches of `step` (weights are fixed until the optimizer step)."""
        cfg = self.cfg
        batches: list[list[Episode]] = []
        for micro in range(self.acc.process_index, self.micro_per_step, self.world):
            failures = self.failures.for_micro(step, micro)
            seed = derive_seed(cfg.seed, "train", step, micro)
            batches.append(self.objective.episodes(self.rollout, failures, cfg.rollout.group_size, seed)
                           if failures else [])
        return batches

    def _micro(self, episodes: list[Episode]) -> _Micro:
        """Advantages and the padded batch of the rows that enter the loss (the objective's rows)."""
        tcfg = self.cfg.train
        stats: dict[str, float] = {}
        if not episodes:  # e.g. online mode where every attempt of the micro-batch passed
            return _Micro(episodes, stats, None, None)
        all_rewards = torch.tensor([self.objective.reward(e) for e in episodes])  # [N]
        cands = self.objective.rows(episodes)  # [R] the rows that may enter the loss (R = N for a GRPO objective)
        stats.update(episodes=len(episodes), reward=float(all_rewards.sum()), retry_ok=sum(e.retry_ok for e in episodes),
                     reflection_len=sum(len(e.reflection_ids) for e in episodes),
                     gen_tokens=sum(len(e.attempt_ids) + len(e.reflection_ids) + len(e.retry_ids) for e in episodes))
        if not cands:  # distill_retry with no successful retry: nothing to learn from
            stats.update(zero_adv=float(len(episodes)))
            return _Micro(episodes, stats, None, None)
        rewards = all_rewards[[r.episode for r in cands]]  # [R]
        gids = {g: i for i, g in enumerate(dict.fromkeys(episodes[r.episode].group_id for r in cands))}
        group_ids = torch.tensor([gids[episodes[r.episode].group_id] for r in cands])  # [R]
        adv, no_signal = self.objective.advantages(rewards, group_ids, tcfg.advantage)  # [R], [R]
        for r, a in zip(cands, adv.tolist()):
            episodes[r.episode].advantage = a
        # episodes without a row carry no policy signal either (distill_retry's failed retries)
        stats.update(zero_adv=float(no_signal.sum()) + (len(episodes) - len(cands)))
        # A zero-signal group's policy term is exactly zero, its KL term is not: keep it when beta > 0.
        rows = list(range(len(cands))) if tcfg.beta > 0 else [i for i in range(len(cands)) if not no_signal[i]]
        if not rows:
            return _Micro(episodes, stats, None, None)
        kept = [cands[i] for i in rows]
        batch = grpo.build_completion_batch([r.context for r in kept], [r.completion for r in kept],
                                            self.tok.pad_token_id)
        batch = tuple(t.to(self.acc.device) for t in batch)  # [B, T] each
        groups = group_ids[rows].to(self.acc.device) if self.shared_prefix else None  # [B]
        return _Micro(episodes, stats, batch, adv[rows], self._sampling_logprobs(kept, batch[2]), groups)

    def _sampling_logprobs(self, rows: list[Row], completion_mask: torch.Tensor) -> torch.Tensor | None:
        """[B, T] the engine's log-probs of the trained tokens, when they are comparable with the training
        forward's: the engine keeps log_softmax(logits) at temperature 1, so only at a sampling temperature of 1 (or 0)."""
        complete = all(len(r.sampling_logprobs) == len(r.completion) for r in rows)
        if self.temperature == 1.0 and complete:
            return grpo.completion_values([r.sampling_logprobs for r in rows], completion_mask)  # [B, T]
        if self.cfg.train.sampling_correction == "tis":
            raise RuntimeError("train.sampling_correction=tis: the engine returned no log-probs for some trained tokens")
        return None

    def _old_logprobs(self, micro: _Micro) -> torch.Tensor | None:
        """The PPO "old" policy for several updates per batch: the training forward, no grad, before any update."""
        t0 = time.perf_counter()
        with torch.no_grad():
            if micro.batch is None:  # the same forward as the ranks with rows (a wrapped forward may hold collectives)
                self.policy(*self._pad_batch())
                old = None
            else:
                old = self.policy(*micro.batch, micro.groups)  # [B, T]
        self._timed("policy", t0)
        return old

    def _backward(self, micro: _Micro, old: torch.Tensor | None) -> dict[str, float]:
        """Loss and backward of one micro-batch (inside accelerator.accumulate); returns its stats.

        Every rank issues the same collectives on every micro-batch, whatever its data: the loss is
        computed first (an exception there is agreed on by every rank before any gradient collective),
        and a micro-batch with no row in the loss back-propagates an exact zero through the same
        forward and backward (DDP under no_sync reduces only at the step's last micro-batch, but
        DeepSpeed ZeRO-2 reduces gradients inside every micro-step's backward)."""
        loss, stats = self.agree.run("loss", lambda: self._loss(micro, old))
        t0 = time.perf_counter()
        # accelerator.backward divides by the accumulation count (DeepSpeed's engine does the same inside
        # its backward); the loss is already normalised by the global constant, so undo that division.
        self.acc.backward(loss * self.acc.gradient_accumulation_steps)
        self._timed("policy", t0)
        return stats

    def _loss(self, micro: _Micro, old: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's loss (a graph to back-propagate) and its stats; an exact zero without rows."""
        cfg, tcfg = self.cfg, self.cfg.train
        stats = dict(micro.stats)
        if micro.batch is None:
            return self.policy(*self._pad_batch()).sum() * 0.0, stats
        t0 = time.perf_counter()
        logp = self.policy(*micro.batch, micro.groups)  # [B, T]
        old = logp.detach() if old is None else old  # [B, T]
        mask = micro.batch[2]  # [B, T]
        weights = None
        if micro.sampling_logp is not None:
            stats.update(grpo.logprob_mismatch(old, micro.sampling_logp, mask))
            if tcfg.sampling_correction == "tis":
                weights = grpo.truncated_is_weights(old, micro.sampling_logp, mask, tcfg.sampling_correction_cap)  # [B, T]
        ref = None
        if tcfg.beta > 0:
            self._timed("policy", t0)
            t0 = time.perf_counter()
            with self.acc.autocast():
                ref = reference_logprobs(self.model, self.ref, tcfg.logit_chunk_size, *micro.batch,
                                         temperature=self.temperature, group_ids=micro.groups)  # [B, T]
            self._timed("reference", t0)
            t0 = time.perf_counter()
        total = tcfg.batch_size * cfg.rollout.group_size  # the global number of samples (reflections) in this step
        agg = grpo.LossAggregation(tcfg.loss_aggregation)
        norm = total / self.world if agg is grpo.LossAggregation.SEQUENCE_MEAN else total * self.objective.max_tokens(cfg.generation) / self.world
        loss, s = grpo.policy_loss(
            logp, old, micro.advantages.to(logp), mask, clip_eps=tcfg.clip_eps,
            clip_eps_high=tcfg.clip_eps_high or None, beta=tcfg.beta, logp_ref=ref, aggregation=agg, norm_constant=norm,
            is_weights=weights,
        )
        self._timed("policy", t0)  # the forward; _backward times the backward
        stats.update(loss=float(loss.detach()), kl_tokens=s["kl"] * s["num_tokens"],
                     tokens=s["num_tokens"], clip_tokens=s["clip_frac"] * s["num_tokens"])
        return loss, stats

    def _pad_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A one-token batch of padding [1, 2]: the forward a rank with no rows runs to stay in step."""
        pad = self.tok.pad_token_id
        return tuple(t.to(self.acc.device) for t in grpo.build_completion_batch([[pad]], [[pad]], pad))

    # ------------------------------------------------------------------ one step
    def _updates(self, step: int, micros: list[_Micro]) -> tuple[StepTotals, float | None]:
        """train.updates_per_batch optimizer steps over the step's micro-batches; accelerate's accumulate()
        marks the last micro-batch of each pass as the step boundary (gradient sync, optimizer step).
        Returns the first pass's stats and the last gradient norm (None without clipping)."""
        tcfg = self.cfg.train
        olds = (self.agree.run("old log-probs", lambda: [self._old_logprobs(m) for m in micros])
                if tcfg.updates_per_batch > 1 else [None] * len(micros))
        totals, grad_norm = StepTotals(), None
        for update in range(tcfg.updates_per_batch):
            for n, (m, old) in enumerate(zip(micros, olds)):
                with self.acc.accumulate(self.policy):
                    if self.acc.sync_gradients != (n == len(micros) - 1):
                        raise RuntimeError(f"accelerate's accumulation boundary is off at step {step + 1}, micro-batch {n}")
                    s = self._backward(m, old)
                    if update == 0:
                        totals.add(s)
                    if self.acc.sync_gradients:
                        t0 = time.perf_counter()
                        if tcfg.max_grad_norm > 0:
                            grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), tcfg.max_grad_norm)
                        self.opt.step()
                        self.opt.zero_grad(set_to_none=True)
                        self._timed("optimizer", t0)
        return totals, (float(grad_norm) if grad_norm is not None else None)

    def _metrics_row(self, done: int, totals: dict[str, float], grad_norm: float | None, gen_time: float,
                     t0: float) -> MetricsRow:
        # verifier exceptions so far (scored as failures), over all ranks: a broken task shows in the log
        verifier_errors = int(self.acc.reduce(torch.tensor([self.rollout.verify_errors], device=self.acc.device),
                                              reduction="sum").item())
        # the step's generation ends when the slowest rank's does: tokens_per_s is all ranks' tokens over that time
        gen_time = float(self.acc.reduce(torch.tensor([gen_time], dtype=torch.float64, device=self.acc.device),
                                         reduction="max").item())
        return MetricsRow.from_totals(done, totals, processes=self.world, lr=self.scheduler.get_last_lr()[0],
                                      grad_norm=grad_norm, gen_time=gen_time, step_time=time.perf_counter() - t0,
                                      verifier_errors=verifier_errors, diff_comparable=self.temperature == 1.0)

    def _sync_generation_weights(self) -> float | None:
        """An engine with its own copy of the weights (vLLM) gets the policy's after updates, and resets its
        prefix cache: KV computed with old weights must never serve a new rollout. Every rank pushes to its
        own engine (TRL's colocate pattern). The hf engine generates with the policy object: nothing to do,
        except under FSDP2, where its unsharded copy is refreshed. Sharded weights are gathered one tensor at
        a time on every rank (a collective)."""
        engine = self.rollout.engine
        if not engine.holds_weights and self.gen_model is self.model:
            return None
        t0 = time.perf_counter()
        if engine.holds_weights:
            engine.sync_weights(self.acc.unwrap_model(self.policy).model)
        else:
            refresh(self.gen_model, self.model)
        return time.perf_counter() - t0

    def _reflection_diagnostics(self, batches: list[list[Episode]]) -> dict[str, Any]:
        """Length, diversity and repetition of the whole step's reflections (every rank's, gathered).

        Sorted by group id first, so the figures do not depend on how the step was split over processes."""
        from accelerate.utils import gather_object

        mine = [(e.group_id, e.reflection_text, bool(e.retry_ok), len(e.reflection_ids)) for eps in batches for e in eps]
        rows = sorted(gather_object(mine) if self.world > 1 else mine)
        # only the lengths of the ids are read: ranges stand in for the ids, which are not gathered
        return reflection_diagnostics([r[1] for r in rows], retry_ok=[r[2] for r in rows],
                                      token_ids=[range(r[3]) for r in rows])

    def _periodic_eval(self, step: int) -> dict[str, float]:
        # every rank evaluates its share of the chunks and receives the same results
        res = evaluate_model(self.rollout, self.cfg.eval, self.cfg.seed, num_examples=self.cfg.train.eval_examples,
                             show_progress=False, seed_tag=("periodic", step), accelerator=self.acc)
        return {k: v for k in ("acc@1", "acc@2") if (v := res.value(k)) is not None}

    def _print_step(self, bar: Any, row: MetricsRow) -> None:
        """The step's line every train.log_every steps (and the last), and any periodic evaluation, above the bar."""
        every, steps = self.cfg.train.log_every, self.cfg.train.steps
        lines = [step_line(row, steps, kl=self.cfg.train.beta > 0)] if every and (row.step % every == 0 or row.step == steps) else []
        lines += [line] if (line := eval_line(row, steps)) else []
        for line in lines if self.acc.is_main_process else []:
            bar.write(line, file=sys.stdout)

    def _checkpoint(self, done: int) -> None:
        tcfg = self.cfg.train
        save_checkpoint(self.acc, self.out, done, {"step": done, "scheduler": self.scheduler.state_dict()},
                        tcfg.keep_checkpoints)

    # ------------------------------------------------------------------ the loop
    def train(self) -> Path:
        """Run the steps from start_step; returns the folder of the final model (cards and Hub push are the caller's)."""
        tcfg = self.cfg.train
        logs = _RunLogs(self.out, self.start_step) if self.acc.is_main_process else None
        bar = self._bar = progress_bar(total=tcfg.steps, initial=self.start_step, desc="train",
                                       disable=not self.show_progress)
        for step in range(self.start_step, tcfg.steps):
            done, t0 = step + 1, time.perf_counter()
            batches = self.agree.run("rollout", lambda: self._rollouts(step), step=done)
            gen_time = time.perf_counter() - t0
            micros = self.agree.run("loss rows", lambda: [self._micro(eps) for eps in batches])
            self._phase = dict.fromkeys(self._phase, 0.0)
            totals, grad_norm = self._updates(step, micros)
            self.scheduler.step()
            eval_due = bool(tcfg.eval_every) and (done % tcfg.eval_every == 0 or done == tcfg.steps)
            synced = (self._sync_generation_weights()
                      if done % self.cfg.generation.vllm.sync_every == 0 or eval_due else None)
            t = totals.reduced(self.acc)
            row = self._metrics_row(done, t, grad_norm, gen_time, t0)
            row.weight_sync_s = synced
            row.time_generation_s, row.time_policy_s = gen_time, self._phase["policy"]
            row.time_reference_s, row.time_optimizer_s = self._phase["reference"], self._phase["optimizer"]
            row.add_diagnostics(self._reflection_diagnostics(batches))
            self._watch_signal(t)
            if eval_due:
                row.eval = self._periodic_eval(done)
            if logs is not None:
                logs.write(self.acc, row, [e for eps in batches for e in eps][: tcfg.log_episodes_per_step])
            bar.update(1)
            self._print_step(bar, row)
            if tcfg.save_every and done % tcfg.save_every == 0 and done < tcfg.steps:
                self._checkpoint(done)
        bar.close()
        return self._finish(logs)

    def _finish(self, logs: "_RunLogs | None") -> Path:
        """The replica check, the last checkpoint and the final model folder (every rank takes part)."""
        self._check_replicas()
        self._checkpoint(self.cfg.train.steps)
        final = self.out / "final"
        # Under ZeRO-3 / FSDP each rank holds shards: gather the full weights (a collective, every rank).
        full = self._full_state_dict() if self._sharded() else None
        if self.acc.is_main_process:
            logs.close()
            written = save_final(self.acc.unwrap_model(self.policy).model, self.tok, final,
                                 merge=self.cfg.train.merge_adapter, state_dict=full)
            self.log("saved " + ", ".join(map(str, written)))
            record_final_weights(self.out, self.cfg.train.steps, written)
        self.acc.wait_for_everyone()
        # the engine first: vLLM's shutdown tears down its own process groups, which end_training's
        # destruction of the default group would leave invalid ("Invalid process group specified")
        self.close()
        self.acc.end_training()
        return final

    def close(self) -> None:
        """Shut the generation engine down (a vLLM engine holds its own weights and device memory; one left
        open can break the next engine in the process) and the progress bar. Safe to call twice; the hf
        engine's close is a no-op."""
        if getattr(self, "_bar", None) is not None:  # before any error message: the message stays the last line
            self._bar.close()
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _sharded(self) -> bool:
        """Parameters split over ranks (FSDP2; check_supported refuses the others): the local module holds shards only."""
        return sharding(self.acc) is not None

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights, gathered from every rank (a collective; filled on the main process only),
        with the keys of the inner HF model. A tied weight (lm_head = embeddings) is kept once, under its
        parameter's name: gathered copies no longer share storage, so save_pretrained would write both."""
        state = self.acc.get_state_dict(self.policy)  # keys of LogprobModel: "model." + the HF model's own
        inner = self.acc.unwrap_model(self.policy).model
        kept = {n for n, _ in inner.named_parameters()} | {n for n, _ in inner.named_buffers()}  # tied names once
        return {name: v for k, v in state.items() if (name := k.removeprefix("model.")) in kept}

    def _watch_signal(self, totals: dict[str, float]) -> None:
        """Warn once when no group had a learning signal for several steps in a row, saying what to change."""
        if totals["episodes"] and totals["zero_adv"] == totals["episodes"]:
            self._no_signal_steps += 1
        else:
            self._no_signal_steps = 0
        if self._warned_no_signal or self._no_signal_steps < min(NO_SIGNAL_WARN_STEPS, self.cfg.train.steps):
            return
        self._warned_no_signal = True
        if self.acc.is_main_process:
            warnings.warn(
                f"no learning signal: in each of the last {self._no_signal_steps} steps every group of "
                f"{self.cfg.rollout.group_size} retries got equal rewards (all pass or all fail), so every advantage "
                f"is 0 and only the KL term (if any) moves the model; raise rollout.group_size or "
                f"generation.reflection_temperature, or train on examples the model sometimes solves on retry "
                f"(harder ones if retries always pass, easier ones if they always fail)",
                NoLearningSignalWarning, stacklevel=2,
            )

    def _check_replicas(self) -> None:
        """Every rank must hold the same weights after its updates; record (and enforce) it.
        Sharded parameters (FSDP, ZeRO-3) differ by design; there the check is left out."""
        if self._sharded():
            if self.acc.is_main_process:
                write_json(self.out / "replicas.json", {"processes": self.world, "param_checksums": None, "sharded": True})
            return
        with torch.no_grad():
            trainable = [p for p in self.policy.parameters() if p.requires_grad]
            checksum = torch.stack([p.detach().double().sum() for p in trainable]).sum() if trainable else torch.zeros(())
            sums = self.acc.gather(checksum.reshape(1).to(self.acc.device)).cpu().tolist()
        if self.acc.is_main_process:
            write_json(self.out / "replicas.json", {"processes": self.world, "param_checksums": sums})
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"ranks hold different weights after training: checksums {sums}")


class _RunLogs:
    """metrics.jsonl, episodes.jsonl and the trackers (main process only). On resume, the lines of
    steps after the checkpoint are dropped first: those steps are redone."""

    def __init__(self, out: Path, start_step: int):
        _drop_after(out / "metrics.jsonl", start_step)
        _drop_after(out / "episodes.jsonl", start_step)
        self.metrics = JsonlWriter(out / "metrics.jsonl")
        self.episodes = JsonlWriter(out / "episodes.jsonl")

    def write(self, accelerator: Any, row: MetricsRow, logged: list[Episode]) -> None:
        self.metrics.write(row.to_json())
        for e in logged:
            self.episodes.write({"step": row.step, **e.to_json()})
        accelerator.log(row.numbers(), step=row.step)
        log_episode_texts(accelerator, logged, row.step)  # the same few episodes as episodes.jsonl, as text

    def close(self) -> None:
        self.metrics.close()
        self.episodes.close()


def _stepped(scheduler, steps: int) -> dict[str, Any]:
    """A checkpoint written before schedulers were saved as JSON: the schedule is a function of the step."""
    for _ in range(steps):
        scheduler.step()
    return scheduler.state_dict()


def _drop_after(path: Path, step: int) -> None:
    """On resume, forget log lines of steps after the checkpoint (they will be redone)."""
    if not path.exists():
        return
    truncate_partial_tail(path)
    keep = [r for r in iter_jsonl(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def train(cfg: Config, resume: bool | str = False, show_progress: bool = True) -> Path:
    """Run `r3rl train`; returns the folder of the final model. The engine is closed however it ends
    (error, Ctrl-C); a collective broken by a rank that stopped responding ends as one RankLost sentence."""
    with lost_ranks(cfg.train.collective_timeout_s):
        with Trainer(cfg, resume=resume, show_progress=show_progress) as trainer:
            return trainer.train()
