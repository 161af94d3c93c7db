"""Step time of reflection GRPO: TRL's GRPOTrainer + r3rl.integrations.trl vs `r3rl train`.

The same tiny workload for both: the built-in demo model (full fine-tuning, float32, CPU), the
`addition` task, F failures a step mined from the model itself, G reflections each, a 64-token limit
on reflections and retries, temperature 1, learning rate 3e-4, no KL term, no gradient checkpointing.
Each step = sample F x G reflections, a retry after each, verify, one optimizer step.

What differs is the machinery: TRL generates with `model.generate` on the F x G repeated prompts and
prefills every retry conversation from scratch; r3rl prefills each context once, fans the KV cache out
to the G reflections and continues every retry from its reflection's cache. Losses differ in detail
(TRL's default `dapo` aggregation vs r3rl's GRPO), which costs the same forward/backward.

Runs alternate (r3rl, TRL, r3rl, TRL, ...) in one process so machine load hits both alike; the first
step of every run is dropped (warm-up); printed: the median step time of each and their ratio.

    PYTHONPATH=. python bench/trl_vs_r3rl.py                 # F=16, G=8, 6 steps x 2 runs each, 1 thread
    PYTHONPATH=. python bench/trl_vs_r3rl.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from r3rl.config import Config  # noqa: E402
from r3rl.runtime.io import iter_jsonl  # noqa: E402

LIMIT = 64  # tokens, reflections and retries alike (TRL has one max_completion_length)


def base_config(work: Path, failures: int, group: int, steps: int) -> Config:
    cfg = Config()
    cfg.model.name_or_path = "demo"
    cfg.task.name = "addition"
    cfg.generation.max_attempt_tokens = 16
    cfg.generation.max_reflection_tokens = LIMIT
    cfg.generation.max_retry_tokens = LIMIT
    cfg.rollout.group_size = group
    cfg.failures.num_examples = 4 * failures
    cfg.failures.attempts_per_example = 1
    cfg.failures.path = str(work / "failures.jsonl")
    cfg.train.steps = steps
    cfg.train.batch_size = failures
    cfg.train.micro_batch_size = failures
    cfg.train.learning_rate = 3e-4
    cfg.train.lora = False
    cfg.train.beta = 0.0
    cfg.train.save_every = 0
    return cfg


def mine_failures(cfg: Config) -> Path:
    from r3rl.environment.stack import build_rollout
    from r3rl.mining.failure_set import mine
    from r3rl.tasks import load_task

    roll = build_rollout(cfg, task=load_task("addition"))
    mine(roll, cfg.failures, cfg.seed, show_progress=False)
    return Path(cfg.failures.path)


def run_r3rl(cfg: Config, out: Path) -> list[float]:
    from r3rl.training.trainer import train

    cfg.train.output_dir = str(out)
    train(cfg, show_progress=False)
    return [r["step_time"] for r in iter_jsonl(out / "metrics.jsonl")]


def run_trl(cfg: Config, failures: Path, out: Path, seed: int) -> list[float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r3rl.integrations.trl import ReflectionRollout, reflection_dataset, retry_reward
    from r3rl.tasks import load_task
    from r3rl.demo import model_path as demo_model_path

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    task = load_task("addition")
    dataset = reflection_dataset(failures, task)
    timer = StepTimer()
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False,
        per_device_train_batch_size=cfg.train.batch_size * cfg.rollout.group_size,
        num_generations=cfg.rollout.group_size, max_completion_length=LIMIT, temperature=1.0,
        learning_rate=cfg.train.learning_rate, lr_scheduler_type="constant", beta=0.0,
        max_steps=cfg.train.steps, seed=seed, report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=1,
    )
    path = demo_model_path()
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(path), args=args, train_dataset=dataset,
        rollout_func=ReflectionRollout(dataset), reward_funcs=retry_reward(task), callbacks=[timer],
    )
    trainer.train()
    return timer.times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--failures", type=int, default=16, help="failures per step (F)")
    p.add_argument("--group", type=int, default=8, help="reflections per failure (G)")
    p.add_argument("--steps", type=int, default=6, help="steps per run (the first is dropped)")
    p.add_argument("--runs", type=int, default=2, help="runs of each, alternating")
    p.add_argument("--quick", action="store_true", help="F=4, G=4, 3 steps, 1 run each")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared, see tests/conftest.py)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.failures, args.group, args.steps, args.runs = 4, 4, 3, 1
    import transformers
    import trl

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"trl {trl.__version__}; F={args.failures} G={args.group} steps={args.steps} runs={args.runs}")
    times: dict[str, list[float]] = {"r3rl train": [], "TRL + r3rl.integrations.trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = base_config(work, args.failures, args.group, args.steps)
        failures = mine_failures(cfg)
        n = sum(len(r["failed_attempts"]) for r in iter_jsonl(failures))
        print(f"failure set: {n} failed attempts mined from the demo model")
        for run in range(args.runs):  # same seed every run: another seed would make `r3rl train` mine more
            t = run_r3rl(cfg, work / f"r3rl-{run}")
            times["r3rl train"] += t[1:]
            print(f"run {run} r3rl train : " + " ".join(f"{x:.2f}" for x in t) + " s")
            t = run_trl(cfg, failures, work / f"trl-{run}", seed=cfg.seed)
            times["TRL + r3rl.integrations.trl"] += t[1:]
            print(f"run {run} TRL + r3rl: " + " ".join(f"{x:.2f}" for x in t) + " s")
    med = {k: statistics.median(v) for k, v in times.items()}
    print()
    print("| trainer | median step s | steps timed |")
    print("| --- | ---: | ---: |")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.2f} | {len(v)} |")
    print(f"\nTRL step time / r3rl step time = {med['TRL + r3rl.integrations.trl'] / med['r3rl train']:.2f}")


if __name__ == "__main__":
    main()
