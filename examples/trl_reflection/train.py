"""A TRL GRPO script that trains reflections the r3rl way; the r3rl lines are marked `# r3rl`.

    r3rl mine --config r3rl/demo/demo.yaml failures.path=runs/trl/failures.jsonl    # a failure set
    python examples/trl_reflection/train.py --failures runs/trl/failures.jsonl --task addition \\
        --model r3rl/demo/model --output-dir runs/trl

Everything else is an ordinary `GRPOTrainer` run: `GRPOConfig` fields, accelerate / DeepSpeed launch,
vLLM (`--use-vllm`) and logging behave as in any TRL script. The saved model loads with
`r3rl eval --model runs/trl/final` to measure acc@1 / acc@2 before and after.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--failures", required=True, help="failure set (JSONL) written by `r3rl mine`")
    p.add_argument("--task", default="addition", help="r3rl task name or import path (its verifier is the reward)")
    p.add_argument("--model", default=None, help="model folder or hub id (default: r3rl's built-in demo model)")
    p.add_argument("--output-dir", default="runs/trl")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--num-generations", type=int, default=8, help="reflections per failed attempt (GRPO's G)")
    p.add_argument("--failures-per-step", type=int, default=16)
    p.add_argument("--max-completion-length", type=int, default=64, help="token limit of a reflection and of a retry")
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--use-vllm", action="store_true", help="generate reflections and retries with vLLM (GPU)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL
    from r3rl.integrations.trl import INSTALL_HINT

    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    from r3rl.integrations.trl import ReflectionRollout, reflection_dataset, retry_reward  # r3rl
    from r3rl.tasks import load_task  # r3rl
    from r3rl.demo import model_path as demo_model_path

    try:
        task = load_task(args.task)  # r3rl
        dataset = reflection_dataset(args.failures, task)  # r3rl: failed attempts -> reflect prompts
    except (FileNotFoundError, ValueError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2

    model_path = args.model or str(demo_model_path())
    config = GRPOConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.failures_per_step * args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        use_vllm=args.use_vllm,
        # TRL defaults to bf16; on CPU bf16 matmuls are far slower than float32 (docs/design.md)
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
    )
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        args=config,
        train_dataset=dataset,
        rollout_func=ReflectionRollout(dataset),  # r3rl: reflection = completion, then the retry
        reward_funcs=retry_reward(task),  # r3rl: reward = the task's verdict on the retry
    )
    trainer.train()
    final = os.path.join(args.output_dir, "final")
    trainer.save_model(final)
    print(f"final model: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
