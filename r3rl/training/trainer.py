"""Reflection-only GRPO: the training loop.

Each optimizer step:
  1. take `batch_size` failed first attempts (a mined failure set, or drawn online from the policy);
  2. for each, sample G reflections and a retry after each (one batched engine call, the retry
     continuing from the reflection's KV cache);
  3. reward = the retry passes the verifier (mean over retries when there are several);
  4. advantages are normalised inside each group of G; groups whose rewards are all equal carry
     no signal: their policy term is zero, so without a KL term they are skipped in the backward
     (their share is logged, and a run where no group has signal warns);
  5. loss = clipped GRPO surrogate + beta * k3 KL, on the reflection tokens only (the task,
     the failed attempt and the retry get no gradient), accumulated over micro-batches with
     accelerate's `accumulate()` (so DDP, DeepSpeed and FSDP all see the same step boundaries);
  6. one optimizer step; the engine shares the model object, so weights are current at once.

Deliberate choices: the loss is normalised by the *global* number of reflections in the step
(batch_size x G), a constant, so micro-batches and ranks need no communication to agree on it
and skipped groups do not inflate the rest; sampling seeds derive from (seed, step, micro-batch),
so a resumed run and a run on another number of processes roll out the same episodes.
Precision as the HF Trainer / TRL: float32 trainable weights and optimizer state, forward passes
(training, reference, and generation) under `train.mixed_precision` autocast. Log-probs are those
of the reflections' sampling distribution, softmax(logits / T); with several updates per batch the
PPO "old" log-probs come from the same training forward before the first update, so its ratio is 1.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from r3rl.config import Config, dump_config
from r3rl.errors import InputError
from r3rl.io import JsonlWriter, atomic_write_text, iter_jsonl, truncate_partial_tail
from r3rl.mining import load_failures, mine
from r3rl.progress import progress_bar
from r3rl.rollout import Failure, derive_seed
from r3rl.stack import build_rollout
from r3rl.tasks import load_task
from r3rl.training import grpo
from r3rl.training.checkpoint import (adapter_only_state_hooks, latest_checkpoint, load_checkpoint,
                                      prepare_output_dir, save_checkpoint)
from r3rl.training.model_card import publish_final
from r3rl.training.policy import LogprobModel, build_policy, is_peft, reference_logprobs, save_final
from r3rl.training.tracking import log_episode_texts
from r3rl.types import Episode

METRIC_KEYS = ("loss", "episodes", "reward", "retry_ok", "zero_adv", "kl_tokens", "tokens", "reflection_len",
               "gen_tokens", "clip_tokens")
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
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


@dataclass
class _Micro:
    """One micro-batch of episodes, laid out for the loss."""

    episodes: list[Episode]
    stats: dict[str, float]
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # input_ids, attention_mask, completion_mask [B, T]
    advantages: torch.Tensor | None  # [B] of the rows in `batch`


class Trainer:
    def __init__(self, cfg: Config, resume: bool | str = False, show_progress: bool = True):
        from accelerate import Accelerator, PartialState
        from accelerate.utils import set_seed

        self.cfg = cfg
        tcfg = cfg.train
        self.out = Path(tcfg.output_dir)
        from accelerate.utils import parse_flag_from_env

        # The process group, which the Accelerator below reuses; ACCELERATE_USE_CPU must reach it as it
        # would through AcceleratorState, or `accelerate launch` CPU ranks each start a group of one.
        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        self.world = state.num_processes
        accum = accumulation_steps(tcfg.batch_size, tcfg.micro_batch_size, self.world)
        self.micro_per_step = accum * self.world
        _check_launcher_env(accum)
        self.precision = resolve_mixed_precision(tcfg.mixed_precision, state.device)
        prepare_output_dir(self.out, bool(resume), tcfg.overwrite_output_dir, state.is_main_process)
        state.wait_for_everyone()
        trackers = tcfg.report_to or None
        _forget_accelerator_state()
        self.acc = Accelerator(log_with=trackers, project_dir=str(self.out), mixed_precision=self.precision,
                               gradient_accumulation_steps=accum)
        if self._sharded():
            raise InputError(
                "FSDP and DeepSpeed ZeRO-3 shard the parameters, but r3rl generates on each rank with whole weights "
                "(ranks decoding different lengths would hang in the per-layer all-gathers); use "
                "configs/accelerate/ddp.yaml or deepspeed-zero2.yaml, with LoRA for models that do not fit one GPU"
            )
        set_seed(cfg.seed)
        if tcfg.deterministic:
            torch.use_deterministic_algorithms(True)
        self.show_progress = show_progress and self.acc.is_main_process
        self.task = load_task(cfg.task.name, **cfg.task.options)

        self.model, self.tok, self.ref = build_policy(cfg.model, tcfg, self.acc.device, self.precision)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise InputError("no trainable parameters (check train.lora / the adapter)")
        opt = torch.optim.AdamW(params, lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                weight_decay=tcfg.weight_decay)
        from transformers import get_scheduler

        # Not passed to accelerate.prepare: its wrapper would step the schedule once per process.
        self.scheduler = get_scheduler(tcfg.lr_scheduler, opt, num_warmup_steps=tcfg.warmup_steps,
                                       num_training_steps=tcfg.steps)
        self._configure_deepspeed()
        # The scheduler's state goes into trainer_state.json (JSON), not accelerate's custom-object
        # pickle, which accelerate loads with weights_only=False: a checkpoint must never run code.
        # log-probs of the distribution reflections are sampled from (0 = greedy counts as 1)
        self.temperature = cfg.generation.reflection_temperature or 1.0
        self.policy, self.opt = self.acc.prepare(LogprobModel(self.model, tcfg.logit_chunk_size, self.temperature), opt)
        if is_peft(self.model):
            adapter_only_state_hooks(self.acc, lambda m: m is self.policy)

        # the engine generates with the policy object itself, under the training forward's autocast
        self.rollout = build_rollout(cfg, task=self.task, model=self.model, tokenizer=self.tok, autocast=self.acc.autocast)
        self.engine = self.rollout.engine

        self.start_step = 0
        if resume:
            ckpt = latest_checkpoint(self.out) if resume is True else Path(resume)
            if ckpt is None:
                # A run stopped before its first checkpoint: --resume starts it again from step 0 (its
                # log lines are dropped below), so one command continues a run whatever point it reached.
                self.log(f"--resume: no checkpoint yet in {self.out / 'checkpoints'}; starting from step 0")
            else:
                state = load_checkpoint(self.acc, ckpt)
                self.start_step = int(state["step"])
                self.scheduler.load_state_dict(state.get("scheduler") or _stepped(self.scheduler, self.start_step))
                self.log(f"resumed from {ckpt} at step {self.start_step}")
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", dump_config(cfg))
        if trackers:
            from r3rl.config import to_dict

            self.acc.init_trackers("r3rl", config=_flat(to_dict(cfg)))
        self.failures = None if tcfg.online else self._failure_set()
        self.online_examples = self.task.load_examples(cfg.failures.split, cfg.failures.num_examples, seed=cfg.seed) if tcfg.online else None
        self._no_signal_steps = 0
        self._warned_no_signal = False

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

    # ------------------------------------------------------------------ data
    def log(self, msg: str) -> None:
        if self.acc.is_main_process:
            print(msg, flush=True)

    def _failure_set(self) -> list[Failure]:
        fcfg = self.cfg.failures
        # Mining resumes: on a complete failure set it only checks ids, after an interruption it
        # finishes the job, so `r3rl mine` first and `r3rl train` alone give the same set. Every rank
        # mines its share of the chunks; the main process writes the file before mine() returns.
        summary = mine(self.rollout, fcfg, self.cfg.seed, show_progress=self.show_progress, accelerator=self.acc)
        self.log(f"failure set: {summary['failure_set_size']} examples with a failed attempt ({fcfg.path})")
        return load_failures(fcfg.path, fcfg.max_per_example, task=self.task)

    def _stream(self, items: list[Any], start: int, count: int, tag: str) -> list[Any]:
        """items[start : start + count] of an endless stream that reshuffles each epoch, seeded."""
        out = []
        for g in range(start, start + count):
            epoch, pos = divmod(g, len(items))
            out.append(items[_epoch_order(len(items), derive_seed(self.cfg.seed, tag, epoch))[pos]])
        return out

    def _micro_failures(self, step: int, micro: int) -> list[Failure]:
        mb = self.cfg.train.micro_batch_size
        start = (step * self.micro_per_step + micro) * mb
        if self.failures is not None:
            return self._stream(self.failures, start, mb, "failures")
        examples = self._stream(self.online_examples, start, mb, "online")
        attempts = self.rollout.attempts(examples, n=self.cfg.failures.attempts_per_example,
                                         seed=derive_seed(self.cfg.seed, "online", step, micro))
        out = []
        for row in attempts:
            fail = next((a for a in row if not a.verdict.ok), None)
            if fail is not None:
                out.append(Failure(fail.example, fail.text, fail.verdict.reason))
        return out

    # ------------------------------------------------------------------ one micro-batch
    def _micro(self, episodes: list[Episode]) -> _Micro:
        """Advantages and the padded batch of the rows that enter the loss."""
        tcfg = self.cfg.train
        stats = {k: 0.0 for k in METRIC_KEYS}
        if not episodes:  # e.g. online mode where every attempt of the micro-batch passed
            return _Micro(episodes, stats, None, None)
        rewards = torch.tensor([e.reward for e in episodes])  # [N]
        gids = {g: i for i, g in enumerate(dict.fromkeys(e.group_id for e in episodes))}
        group_ids = torch.tensor([gids[e.group_id] for e in episodes])  # [N]
        adv = grpo.group_advantages(rewards, group_ids, tcfg.advantage)  # [N]
        no_signal = grpo.zero_signal_mask(rewards, group_ids)  # [N]
        for e, a in zip(episodes, adv.tolist()):
            e.advantage = a
        stats.update(episodes=len(episodes), reward=float(rewards.sum()), retry_ok=sum(e.retry_ok for e in episodes),
                     zero_adv=float(no_signal.sum()), reflection_len=sum(len(e.reflection_ids) for e in episodes),
                     gen_tokens=sum(len(e.reflection_ids) + len(e.retry_ids) for e in episodes))
        # A zero-signal group's policy term is exactly zero, its KL term is not: keep it when beta > 0.
        rows = list(range(len(episodes))) if tcfg.beta > 0 else [i for i in range(len(episodes)) if not no_signal[i]]
        if not rows:
            return _Micro(episodes, stats, None, None)
        batch = grpo.build_completion_batch([episodes[i].context_ids for i in rows],
                                            [episodes[i].reflection_ids for i in rows], self.tok.pad_token_id)
        batch = tuple(t.to(self.acc.device) for t in batch)  # [B, T] each
        return _Micro(episodes, stats, batch, adv[rows])

    def _old_logprobs(self, micro: _Micro) -> torch.Tensor | None:
        """The PPO "old" policy for several updates per batch: the training forward, no grad, before any update."""
        if micro.batch is None:
            return None
        with torch.no_grad():
            return self.policy(*micro.batch)  # [B, T]

    def _backward(self, micro: _Micro, old: torch.Tensor | None) -> dict[str, float]:
        """Loss and backward of one micro-batch (inside accelerator.accumulate); returns its stats."""
        cfg, tcfg = self.cfg, self.cfg.train
        stats = dict(micro.stats)
        if micro.batch is None:
            # Every rank must run a backward on a synchronising micro-batch so gradients are all-reduced;
            # with no row in the loss it back-propagates an exact zero.
            if self.acc.sync_gradients:
                self._zero_backward()
            return stats
        logp = self.policy(*micro.batch)  # [B, T]
        old = logp.detach() if old is None else old  # [B, T]
        ref = None
        if tcfg.beta > 0:
            with self.acc.autocast():
                ref = reference_logprobs(self.model, self.ref, tcfg.logit_chunk_size, *micro.batch,
                                         temperature=self.temperature)  # [B, T]
        total = tcfg.batch_size * cfg.rollout.group_size  # the global number of reflections in this step
        agg = grpo.LossAggregation(tcfg.loss_aggregation)
        norm = total / self.world if agg is grpo.LossAggregation.SEQUENCE_MEAN else total * cfg.generation.max_reflection_tokens / self.world
        loss, s = grpo.policy_loss(
            logp, old, micro.advantages.to(logp), micro.batch[2], clip_eps=tcfg.clip_eps,
            clip_eps_high=tcfg.clip_eps_high or None, beta=tcfg.beta, logp_ref=ref, aggregation=agg, norm_constant=norm,
        )
        # accelerator.backward divides by the accumulation count (DeepSpeed's engine does the same inside
        # its backward); the loss is already normalised by the global constant, so undo that division.
        self.acc.backward(loss * self.acc.gradient_accumulation_steps)
        stats.update(loss=float(loss.detach()), kl_tokens=s["kl"] * s["num_tokens"],
                     tokens=s["num_tokens"], clip_tokens=s["clip_frac"] * s["num_tokens"])
        return stats

    def _zero_backward(self) -> None:
        """A backward of an exact zero: keeps every rank's gradient all-reduce in step when one rank
        has nothing to learn from in a synchronising micro-batch."""
        pad = self.tok.pad_token_id
        batch = tuple(t.to(self.acc.device) for t in grpo.build_completion_batch([[pad]], [[pad]], pad))
        self.acc.backward(self.policy(*batch).sum() * 0.0)

    # ------------------------------------------------------------------ the loop
    def train(self) -> Path:
        cfg, tcfg = self.cfg, self.cfg.train
        if self.acc.is_main_process:  # on resume, forget log lines of steps that will be redone
            _drop_after(self.out / "metrics.jsonl", self.start_step)
            _drop_after(self.out / "episodes.jsonl", self.start_step)
        metrics_w = JsonlWriter(self.out / "metrics.jsonl") if self.acc.is_main_process else None
        episodes_w = JsonlWriter(self.out / "episodes.jsonl") if self.acc.is_main_process else None
        bar = progress_bar(total=tcfg.steps, initial=self.start_step, desc="train", disable=not self.show_progress)
        mine_ids = range(self.acc.process_index, self.micro_per_step, self.world)
        for step in range(self.start_step, tcfg.steps):
            t0 = time.perf_counter()
            totals = torch.zeros(len(METRIC_KEYS), dtype=torch.float64)
            # 1. rollouts of this rank's micro-batches (weights are fixed until the optimizer step)
            batches: list[list[Episode]] = []
            for micro in mine_ids:
                failures = self._micro_failures(step, micro)
                seed = derive_seed(cfg.seed, "train", step, micro)
                batches.append(self.rollout.reflect_and_retry(failures, cfg.rollout.group_size, seed=seed) if failures else [])
            gen_time = time.perf_counter() - t0
            logged = [e for eps in batches for e in eps][: tcfg.log_episodes_per_step]
            micros = [self._micro(eps) for eps in batches]
            olds = [self._old_logprobs(m) for m in micros] if tcfg.updates_per_batch > 1 else [None] * len(micros)
            # 2. updates: one optimizer step per pass over the rollouts; accelerate's accumulate() marks
            #    the last micro-batch of each pass as the step boundary (gradient sync, optimizer step)
            grad_norm = None
            for update in range(tcfg.updates_per_batch):
                for n, (m, old) in enumerate(zip(micros, olds)):
                    with self.acc.accumulate(self.policy):
                        if self.acc.sync_gradients != (n == len(micros) - 1):
                            raise RuntimeError(f"accelerate's accumulation boundary is off at step {step + 1}, micro-batch {n}")
                        s = self._backward(m, old)
                        if update == 0:
                            totals += torch.tensor([s[k] for k in METRIC_KEYS], dtype=torch.float64)
                        if self.acc.sync_gradients:
                            if tcfg.max_grad_norm > 0:
                                grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), tcfg.max_grad_norm)
                            self.opt.step()
                            self.opt.zero_grad(set_to_none=True)
            self.scheduler.step()
            totals = self.acc.reduce(totals.to(self.acc.device), reduction="sum").cpu()
            t = dict(zip(METRIC_KEYS, totals.tolist()))
            # verifier exceptions so far (scored as failures), over all ranks: a broken task shows in the log
            verifier_errors = int(self.acc.reduce(torch.tensor([self.rollout.verify_errors], device=self.acc.device),
                                                  reduction="sum").item())
            n_eps = max(t["episodes"], 1.0)
            row: dict[str, Any] = {
                "step": step + 1,
                "loss": t["loss"] / self.world,  # each rank's loss is scaled by W (gradients are averaged)
                "reward_mean": t["reward"] / n_eps,
                "retry_success": t["retry_ok"] / n_eps,
                "zero_adv_frac": t["zero_adv"] / n_eps,
                "kl": t["kl_tokens"] / max(t["tokens"], 1.0),
                "clip_frac": t["clip_tokens"] / max(t["tokens"], 1.0),
                "reflection_len": t["reflection_len"] / n_eps,
                "episodes": int(t["episodes"]),
                "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": t["gen_tokens"] / max(gen_time, 1e-9),
                "step_time": time.perf_counter() - t0,
                "verifier_errors": verifier_errors,
            }
            self._watch_signal(t)
            done = step + 1
            if tcfg.eval_every and (done % tcfg.eval_every == 0 or done == tcfg.steps):
                row.update(self._periodic_eval(done))
            if self.acc.is_main_process:
                metrics_w.write(row)
                for e in logged:
                    episodes_w.write({"step": done, **e.to_json()})
                self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=done)
                log_episode_texts(self.acc, logged, done)  # the same few episodes as episodes.jsonl, as text
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", zero_adv=f"{row['zero_adv_frac']:.2f}",
                            len=f"{row['reflection_len']:.0f}", loss=f"{row['loss']:.1e}")  # GRPO's loss is ~1e-8: zero-mean advantages, ratio 1
            if tcfg.save_every and done % tcfg.save_every == 0 and done < tcfg.steps:
                save_checkpoint(self.acc, self.out, done, {"step": done, "scheduler": self.scheduler.state_dict()},
                                tcfg.keep_checkpoints)
        bar.close()
        self._check_replicas()
        save_checkpoint(self.acc, self.out, tcfg.steps, {"step": tcfg.steps, "scheduler": self.scheduler.state_dict()},
                        tcfg.keep_checkpoints)
        final = self.out / "final"
        # Under ZeRO-3 / FSDP each rank holds shards: gather the full weights (a collective, every rank).
        full = self._full_state_dict() if self._sharded() else None
        if self.acc.is_main_process:
            for w in (metrics_w, episodes_w):
                w.close()
            written = save_final(self.acc.unwrap_model(self.policy).model, self.tok, final, merge=tcfg.merge_adapter,
                                 state_dict=full)
            self.log("saved " + ", ".join(map(str, written)))
            publish_final(self.out, written, tcfg.push_to_hub, tcfg.hub_model_id)  # model cards; Hub push if asked
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return final

    def _sharded(self) -> bool:
        """Parameters split over ranks (FSDP, DeepSpeed ZeRO-3): the local module holds shards only."""
        from accelerate.utils import DistributedType

        if self.acc.distributed_type == DistributedType.FSDP:
            return True
        plugin = self.acc.state.deepspeed_plugin
        return plugin is not None and plugin.zero_stage == 3

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights, gathered from every rank, with the keys of the inner HF model."""
        state = self.acc.get_state_dict(self.policy)  # keys of LogprobModel: "model." + the HF model's own
        return {k.removeprefix("model."): v for k, v in state.items()}

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
                from r3rl.io import write_json

                write_json(self.out / "replicas.json", {"processes": self.world, "param_checksums": None, "sharded": True})
            return
        with torch.no_grad():
            trainable = [p for p in self.policy.parameters() if p.requires_grad]
            checksum = torch.stack([p.detach().double().sum() for p in trainable]).sum() if trainable else torch.zeros(())
            sums = self.acc.gather(checksum.reshape(1).to(self.acc.device)).cpu().tolist()
        if self.acc.is_main_process:
            from r3rl.io import write_json

            write_json(self.out / "replicas.json", {"processes": self.world, "param_checksums": sums})
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"ranks hold different weights after training: checksums {sums}")

    def _periodic_eval(self, step: int) -> dict[str, float]:
        from r3rl.evaluation.accuracy import evaluate_model

        # every rank evaluates its share of the chunks and receives the same results
        res = evaluate_model(self.rollout, self.cfg.eval, self.cfg.seed, num_examples=self.cfg.train.eval_examples,
                             show_progress=False, seed_tag=("periodic", step), accelerator=self.acc)
        return {f"eval/{k}": res[k] for k in ("acc@1", "acc@2") if k in res}


def _stepped(scheduler, steps: int) -> dict[str, Any]:
    """A checkpoint written before schedulers were saved as JSON: the schedule is a function of the step."""
    for _ in range(steps):
        scheduler.step()
    return scheduler.state_dict()


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int) -> list[int]:
    """The seeded permutation of one epoch (cached: every micro-batch of the epoch reads it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


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
    """Run `r3rl train`; returns the folder of the final model."""
    return Trainer(cfg, resume=resume, show_progress=show_progress).train()
