"""Reflection-only GRPO: the training loop.

Each optimizer step:
  1. take `batch_size` failed first attempts (a mined failure set, or drawn online from the policy);
  2. for each, sample G reflections and a retry after each (one batched engine call, the retry
     continuing from the reflection's KV cache);
  3. reward = the retry passes the verifier (mean over retries when there are several);
  4. advantages are normalised inside each group of G; groups whose rewards are all equal carry
     no signal and are skipped in the backward pass (their share is logged);
  5. loss = clipped GRPO surrogate + beta * k3 KL, on the reflection tokens only (the task,
     the failed attempt and the retry get no gradient), accumulated over micro-batches;
  6. one optimizer step; the engine shares the model object, so weights are current at once.

Deliberate choices: the loss is normalised by the *global* number of reflections in the step
(batch_size x G), a constant, so micro-batches and ranks need no communication to agree on it
and skipped groups do not inflate the rest; sampling seeds derive from (seed, step, micro-batch),
so a resumed run and a run on another number of processes roll out the same episodes.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from r3rl.training import grpo
from r3rl.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from r3rl.config import Config, dump_config
from r3rl.io import JsonlWriter, atomic_write_text, iter_jsonl, truncate_partial_tail
from r3rl.mining import load_failures, mine
from r3rl.training.policy import LogprobModel, build_policy, reference_logprobs, save_final
from r3rl.progress import progress_bar
from r3rl.rollout import Failure, Rollout, derive_seed
from r3rl.tasks import load_task
from r3rl.types import Episode

METRIC_KEYS = ("loss", "episodes", "reward", "retry_ok", "zero_adv", "kl_tokens", "tokens", "reflection_len",
               "gen_tokens", "clip_tokens")


class Trainer:
    def __init__(self, cfg: Config, resume: bool | str = False, show_progress: bool = True):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.out = Path(cfg.train.output_dir)
        trackers = cfg.train.report_to or None
        self.acc = Accelerator(log_with=trackers, project_dir=str(self.out))
        set_seed(cfg.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.world = self.acc.num_processes
        self.show_progress = show_progress and self.acc.is_main_process
        tcfg = cfg.train
        micro_per_step = tcfg.batch_size // tcfg.micro_batch_size
        if micro_per_step % self.world:
            raise ValueError(
                f"train.batch_size / train.micro_batch_size = {micro_per_step} micro-batches per step must be a "
                f"multiple of the number of processes ({self.world})"
            )
        self.micro_per_step = micro_per_step
        self.task = load_task(cfg.task.name, **cfg.task.options)

        self.model, self.tok, self.ref = build_policy(cfg.model, tcfg, self.acc.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters (check train.lora / the adapter)")
        opt = torch.optim.AdamW(params, lr=tcfg.learning_rate, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                                weight_decay=tcfg.weight_decay)
        from transformers import get_scheduler

        # Not passed to accelerate.prepare: its wrapper would step the schedule once per process.
        self.scheduler = get_scheduler(tcfg.lr_scheduler, opt, num_warmup_steps=tcfg.warmup_steps,
                                       num_training_steps=tcfg.steps)
        # The scheduler's state goes into trainer_state.json (JSON), not accelerate's custom-object
        # pickle, which accelerate loads with weights_only=False: a checkpoint must never run code.
        self.policy, self.opt = self.acc.prepare(LogprobModel(self.model, tcfg.logit_chunk_size), opt)

        from r3rl.engine.hf import HFEngine

        self.engine = HFEngine(self.model, self.tok, max_batch_size=cfg.generation.max_batch_size)
        self.rollout = Rollout(self.engine, self.task, cfg.generation, cfg.rollout)

        self.start_step = 0
        if resume:
            ckpt = latest_checkpoint(self.out) if resume is True else Path(resume)
            if ckpt is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
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

    # ------------------------------------------------------------------ data
    def log(self, msg: str) -> None:
        if self.acc.is_main_process:
            print(msg, flush=True)

    def _failure_set(self) -> list[Failure]:
        fcfg = self.cfg.failures
        if self.acc.is_main_process:
            # Mining resumes: on a complete failure set it only checks ids, after an interruption it
            # finishes the job, so `r3rl mine` first and `r3rl train` alone give the same set.
            summary = mine(self.rollout, fcfg, self.cfg.seed, show_progress=self.show_progress)
            self.log(f"failure set: {summary['failure_set_size']} examples with a failed attempt ({fcfg.path})")
        self.acc.wait_for_everyone()
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
    def _backward(self, episodes: list[Episode], sync: bool) -> dict[str, float]:
        cfg, tcfg = self.cfg, self.cfg.train
        G = cfg.rollout.group_size
        stats = {k: 0.0 for k in METRIC_KEYS}
        if not episodes:  # e.g. online mode where every attempt of the micro-batch passed
            if sync:
                self._zero_backward()
            return stats
        rewards = torch.tensor([e.reward for e in episodes])  # [N]
        gids = {g: i for i, g in enumerate(dict.fromkeys(e.group_id for e in episodes))}
        group_ids = torch.tensor([gids[e.group_id] for e in episodes])  # [N]
        adv = grpo.group_advantages(rewards, group_ids, tcfg.advantage)  # [N]
        no_signal = grpo.zero_signal_mask(rewards, group_ids)  # [N]
        for e, a in zip(episodes, adv.tolist()):
            e.advantage = a
        active = [i for i in range(len(episodes)) if not no_signal[i]]
        stats.update(episodes=len(episodes), reward=float(rewards.sum()), retry_ok=sum(e.retry_ok for e in episodes),
                     zero_adv=float(no_signal.sum()), reflection_len=sum(len(e.reflection_ids) for e in episodes))
        # Every rank must run a backward on its last micro-batch so gradients are all-reduced;
        # with no active reflection it back-propagates an exact zero.
        dummy = not active
        if dummy and not sync:
            return stats
        rows = active or [0]
        batch = grpo.build_completion_batch([episodes[i].context_ids for i in rows],
                                            [episodes[i].reflection_ids for i in rows], self.tok.pad_token_id)
        batch = tuple(t.to(self.acc.device) for t in batch)
        input_ids, attn, cmask = batch  # [B, T] each
        ctx = nullcontext() if sync else self.acc.no_sync(self.policy)
        with ctx:
            logp = self.policy(input_ids, attn, cmask)  # [B, T]
            if tcfg.updates_per_batch > 1:
                old = grpo.completion_values([episodes[i].reflection_logprobs for i in rows], cmask).to(logp)  # [B, T]
            else:
                old = logp.detach()  # [B, T]
            ref = reference_logprobs(self.model, self.ref, tcfg.logit_chunk_size, *batch) if tcfg.beta > 0 else None
            total = tcfg.batch_size * G  # the global number of reflections in this step
            agg = grpo.LossAggregation(tcfg.loss_aggregation)
            norm = total / self.world if agg is grpo.LossAggregation.SEQUENCE_MEAN else total * cfg.generation.max_reflection_tokens / self.world
            loss, s = grpo.policy_loss(
                logp, old, adv[rows].to(logp), cmask, clip_eps=tcfg.clip_eps, clip_eps_high=tcfg.clip_eps_high or None,
                beta=tcfg.beta, logp_ref=ref, aggregation=agg, norm_constant=norm,
            )
            if dummy:
                loss = loss * 0.0
            self.acc.backward(loss)
        if not dummy:
            stats.update(loss=float(loss.detach()), kl_tokens=s["kl"] * s["num_tokens"],
                         tokens=s["num_tokens"], clip_tokens=s["clip_frac"] * s["num_tokens"])
        return stats

    def _zero_backward(self) -> None:
        """A backward of an exact zero: keeps every rank's gradient all-reduce in step when one rank
        has nothing to learn from in its last micro-batch."""
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
            gen_time = 0.0
            totals = torch.zeros(len(METRIC_KEYS), dtype=torch.float64)
            # 1. rollouts of this rank's micro-batches (weights are fixed until the optimizer step)
            batches: list[list[Episode]] = []
            for micro in mine_ids:
                failures = self._micro_failures(step, micro)
                seed = derive_seed(cfg.seed, "train", step, micro)
                episodes = self.rollout.reflect_and_retry(failures, cfg.rollout.group_size, seed=seed) if failures else []
                totals[METRIC_KEYS.index("gen_tokens")] += sum(len(e.reflection_ids) + len(e.retry_ids) for e in episodes)
                batches.append(episodes)
            gen_time = time.perf_counter() - t0
            logged = [e for eps in batches for e in eps][: tcfg.log_episodes_per_step]
            # 2. updates: one optimizer step per pass over the rollouts (several passes reuse them,
            #    with the sampling-time log-probs as the PPO "old" policy)
            for update in range(tcfg.updates_per_batch):
                for n, episodes in enumerate(batches):
                    s = self._backward(episodes, sync=n == len(batches) - 1)
                    if update == 0:
                        totals += torch.tensor([s[k] for k in METRIC_KEYS], dtype=torch.float64)
                grad_norm = self.acc.clip_grad_norm_(self.policy.parameters(), tcfg.max_grad_norm) if tcfg.max_grad_norm > 0 else None
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            self.scheduler.step()
            totals = self.acc.reduce(totals.to(self.acc.device), reduction="sum").cpu()
            t = dict(zip(METRIC_KEYS, totals.tolist()))
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
            }
            done = step + 1
            if tcfg.eval_every and (done % tcfg.eval_every == 0 or done == tcfg.steps):
                row.update(self._periodic_eval(done))
            if self.acc.is_main_process:
                metrics_w.write(row)
                for e in logged:
                    episodes_w.write({"step": done, **e.to_json()})
                self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=done)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", zero_adv=f"{row['zero_adv_frac']:.2f}",
                            len=f"{row['reflection_len']:.0f}", loss=f"{row['loss']:.4f}")
            if tcfg.save_every and done % tcfg.save_every == 0 and done < tcfg.steps:
                save_checkpoint(self.acc, self.out, done, {"step": done, "scheduler": self.scheduler.state_dict()},
                                tcfg.keep_checkpoints)
        bar.close()
        self._check_replicas()
        save_checkpoint(self.acc, self.out, tcfg.steps, {"step": tcfg.steps, "scheduler": self.scheduler.state_dict()},
                        tcfg.keep_checkpoints)
        final = self.out / "final"
        if self.acc.is_main_process:
            for w in (metrics_w, episodes_w):
                w.close()
            written = save_final(self.acc.unwrap_model(self.policy).model, self.tok, final, merge=tcfg.merge_adapter)
            self.log("saved " + ", ".join(map(str, written)))
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return final

    def _check_replicas(self) -> None:
        """Every rank must hold the same weights after its updates; record (and enforce) it."""
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
        out: dict[str, float] = {}
        if self.acc.is_main_process:
            from r3rl.evaluation.accuracy import evaluate_model

            res = evaluate_model(self.rollout, self.cfg.eval, self.cfg.seed, num_examples=self.cfg.train.eval_examples,
                                 show_progress=False, seed_tag=("periodic", step))
            out = {f"eval/{k}": res[k] for k in ("acc@1", "acc@2") if k in res}
        self.acc.wait_for_everyone()
        return out


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
