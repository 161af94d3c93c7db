"""The `r3rl` command: thin wrappers over the library.

    r3rl mine   --config FILE [section.field=value ...]
    r3rl train  --config FILE [--resume] [overrides]
    r3rl eval   --config FILE [--model PATH] [overrides]
    r3rl report RUN_DIR
    r3rl demo   [--quick]
    r3rl tasks
    r3rl config [--config FILE] [--docs] [overrides]   (the resolved config; --docs adds each field's doc)
    r3rl check-task TASK [--cases N]            (hostile completions against a verifier)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from r3rl import __version__


def _config(args: argparse.Namespace):
    from r3rl.config import load_config

    return load_config(args.config, args.overrides)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML preset (see configs/); fields not given keep their defaults")
    p.add_argument("overrides", nargs="*", metavar="section.field=value", help="override any config field")


def cmd_tasks(args: argparse.Namespace) -> int:
    from r3rl.tasks import available_tasks

    for name, where in available_tasks().items():
        print(f"{name:20s} {where}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from r3rl.config import describe_fields, dump_config

    cfg = _config(args)
    if not args.docs:
        print(dump_config(cfg), end="")
        return 0
    rows = describe_fields(cfg)
    width = max(len(name) + len(value) for name, value, _ in rows) + 3
    for name, value, doc in rows:
        print(f"{name} = {value}".ljust(width) + f"  {doc}")
    return 0


def _rollout(cfg):
    """The model behind an engine, and the rollout over the configured task."""
    from r3rl.engine.hf import HFEngine
    from r3rl.rollout import Rollout
    from r3rl.tasks import load_task
    from r3rl.training.policy import load_for_inference

    task = load_task(cfg.task.name, **cfg.task.options)
    model, tok = load_for_inference(cfg.model)
    return Rollout(HFEngine(model, tok, max_batch_size=cfg.generation.max_batch_size), task, cfg.generation, cfg.rollout)


def cmd_mine(args: argparse.Namespace) -> int:
    from r3rl.mining import mine

    cfg = _config(args)
    summary = mine(_rollout(cfg), cfg.failures, cfg.seed)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from r3rl.evaluation.accuracy import evaluate_model, group_table, results_table
    from r3rl.progress import print_table

    cfg = _config(args)
    if args.model:
        cfg.model.name_or_path = args.model
    res = evaluate_model(_rollout(cfg), cfg.eval, cfg.seed, output_dir=args.output or cfg.eval.output_dir,
                         model_name=cfg.model.name_or_path)
    print_table(results_table(res))
    if (by_group := group_table(res)) is not None:  # e.g. BFCL's per-category accuracy
        print_table(by_group)
    print(f"wrote {args.output or cfg.eval.output_dir}/results.json and episodes.jsonl")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from r3rl.training.trainer import train

    final = train(_config(args), resume=args.resume_from or args.resume)
    print(f"final model: {final}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from r3rl.progress import print_table
    from r3rl.reporting.report import build_report, summary_table

    html = build_report(args.run_dir)
    print_table(summary_table(args.run_dir))
    print(f"wrote {html} and {html.with_suffix('.md')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from r3rl.demo.run import run_demo

    return run_demo(output_dir=args.output, quick=args.quick, overrides=args.overrides)


def cmd_check_task(args: argparse.Namespace) -> int:
    from r3rl.checks.verifier_check import check_tasks, parse_options, report_table, to_json

    reports = check_tasks(args.tasks or None, options=parse_options(args.option), cases=args.cases, seed=args.seed,
                          time_limit=args.time_limit, hard_limit=args.hard_limit, progress=not args.quiet)
    print(report_table(reports))
    named_but_skipped = [r for r in reports if args.tasks and r.skipped]
    for r in named_but_skipped:
        print(f"r3rl check-task: error: task {r.task!r} could not be checked: {r.skipped}", file=sys.stderr)
    for r in reports:
        for f in r.findings:
            print(f"{r.task}: case {f['case']} ({f['family']}) {f['kind']}: {f['detail']}  {f['completion']}")
    if args.json:
        from r3rl.io import atomic_write_text

        atomic_write_text(args.json, to_json(reports) + "\n")
    if named_but_skipped:
        return 2
    return 0 if all(r.clean for r in reports) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r3rl",
        description="Reflect, Retry, Reward: train language models to write better self-reflections.",
    )
    parser.add_argument("--version", action="version", version=f"r3rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("mine", help="build a failure set: sample first attempts, keep the failures (resumable)")
    _add_config_args(p)
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("train", help="reflection-only GRPO training (LoRA or full), with checkpoints")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of train.output_dir")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="acc@1, acc@2 and the no-reflection control, with 95%% intervals")
    _add_config_args(p)
    p.add_argument("--model", help="model to evaluate (hub id, folder, LoRA adapter folder); overrides model.name_or_path")
    p.add_argument("--output", "-o", help="output folder (default eval.output_dir)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="turn a run folder into report.md / report.html with plots")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the offline demo: evaluate, mine, train, evaluate, report (CPU, minutes)")
    p.add_argument("--output", "-o", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test, no significance)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tasks", help="list registered tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("check-task", help="hostile completions against task verifiers: crashes, slow calls, executed code")
    p.add_argument("tasks", nargs="*", metavar="TASK", help="task names or import paths (mypkg.module:MyTask); default: all registered")
    p.add_argument("--cases", type=int, default=10_000, help="hostile completions per task (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a task option (repeatable)")
    p.add_argument("--time-limit", type=float, default=1.0, help="seconds a call may take before it counts as slow")
    p.add_argument("--hard-limit", type=float, default=10.0, help="seconds before a call is killed as a hang")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_check_task)

    p = sub.add_parser("config", help="print the resolved config (defaults <- file <- overrides)")
    _add_config_args(p)
    p.add_argument("--docs", action="store_true", help="every field with its value and its one-line doc")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    # Overrides may come before, between or after options (`eval -c F a=1 -o DIR b=2`): argparse hands
    # the ones after an option back as unknown, and they join the others in order.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from r3rl.config import ConfigError
    from r3rl.rollout import VerifierError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, OSError, ValueError, VerifierError) as e:  # OSError: a full disk or read-only folder names its path
        print(f"r3rl {args.command}: error: {e}", file=sys.stderr)
        return 2
