"""The `r3rl` command: thin wrappers over the library.

    r3rl mine   --config FILE [section.field=value ...]
    r3rl train  --config FILE [--resume | --overwrite] [overrides]
    r3rl eval   --config FILE [--model PATH] [--output DIR] [--overwrite] [overrides]
    r3rl plan   --config FILE [--processes N] [--device-memory 80GB] [--tokens-per-s S]
    r3rl report RUN_DIR
    r3rl compare RUN_DIR RUN_DIR ... [--output DIR]   (runs on the same trials, paired tests)
    r3rl demo   [--quick] [--compare]
    r3rl forgetting --model BEFORE --model AFTER [--tasks T ...]   (lm-eval on both, differences)
    r3rl tasks
    r3rl config [--config FILE] [--docs] [overrides]   (the resolved config; --docs adds each field's doc)
    r3rl check-task TASK [--cases N]            (hostile completions against a verifier)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from r3rl import __version__
from r3rl.api import _say  # print once, from the main process of a launched run
from r3rl.errors import InputError, R3RLError


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


def _resume_command(args: argparse.Namespace, extra: str = "") -> str:
    import shlex

    argv = list(args.argv)
    if extra == "--resume" and "--resume-from" in argv:  # the run's own latest checkpoint is newer
        i = argv.index("--resume-from")
        del argv[i : i + 2]
    if extra and extra not in argv:
        argv.insert(1, extra)
    cmd = "r3rl " + shlex.join(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cmd += "   (under your same `accelerate launch ...` prefix)"
    return cmd


def _interrupted(args: argparse.Namespace, saved: str, extra: str = "") -> int:
    """Ctrl-C: one line saying what is on disk and the command that continues, no traceback."""
    _say(f"\ninterrupted: {saved}; resume with: {_resume_command(args, extra)}", file=sys.stderr)
    return 130


def cmd_mine(args: argparse.Namespace) -> int:
    from r3rl.api import mine
    from r3rl.mining.failure_set import passed_path

    cfg = _config(args)
    path = cfg.failures.path
    try:
        summary = mine(cfg)  # its notes go to stderr: stdout stays the JSON summary
    except KeyboardInterrupt:
        done = sum(_count_lines(p) for p in (path, passed_path(path)))
        return _interrupted(args, f"{done} mined example(s) are saved in {path} (failures) and {passed_path(path)} (all passed)")
    _say(json.dumps(summary, indent=2))
    return 0


def _count_lines(path) -> int:
    from pathlib import Path

    path = Path(path)
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.exists() else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from r3rl.api import evaluate
    from r3rl.evaluation.accuracy import chunks_done
    from r3rl.reporting.console_tables import class_table, group_table, results_table
    from r3rl.runtime.progress import print_table

    cfg = _config(args)
    if args.model:
        cfg.model.name_or_path = args.model
    out = Path(args.output or cfg.eval.output_dir)
    try:
        res = evaluate(cfg, output_dir=args.output, overwrite=args.overwrite)
    except KeyboardInterrupt:
        chunks = chunks_done(out)
        return _interrupted(args, f"{chunks} finished chunk(s) of episodes are saved in {out / 'episodes.jsonl'} "
                                  f"(the same command into the same folder goes on from there)")
    from r3rl.runtime.distributed import launch_rank

    if launch_rank() == 0:
        print_table(results_table(res))
        if (by_group := group_table(res)) is not None:  # e.g. BFCL's per-category accuracy
            print_table(by_group)
        if (by_class := class_table(res)) is not None:  # which failures the reflections fixed
            print_table(by_class)
    _say(f"wrote {out}/results.json and episodes.jsonl")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from r3rl.api import train
    from r3rl.runtime.distributed import launch_rank
    from r3rl.training.agreement import RankFailed, RankLost
    from r3rl.training.checkpoint import latest_checkpoint

    cfg = _config(args)
    try:
        final = train(cfg, resume=args.resume_from or args.resume, overwrite=args.overwrite)  # and the model cards
    except KeyboardInterrupt:
        ckpt = latest_checkpoint(cfg.train.output_dir)
        if ckpt is None:
            return _interrupted(args, f"no checkpoint yet in {cfg.train.output_dir} (train.save_every="
                                      f"{cfg.train.save_every}); the failure set mined so far is kept in {cfg.failures.path}",
                                extra="--resume")
        return _interrupted(args, f"the latest checkpoint is {ckpt}", extra="--resume")
    except (RankFailed, RankLost) as e:
        # Every rank raised RankFailed with the same sentence: rank 0 prints it. A lost rank is seen by each
        # survivor alone (rank 0 may be the one lost), so each says so.
        if isinstance(e, RankLost) or launch_rank() == 0:
            ckpt = latest_checkpoint(cfg.train.output_dir)
            saved = (f"the latest checkpoint is {ckpt}" if ckpt is not None else
                     f"no checkpoint yet in {cfg.train.output_dir} (train.save_every={cfg.train.save_every})")
            stopped = "this rank stopped" if isinstance(e, RankLost) else "every rank stopped"
            print(f"r3rl train: error: {e}; {stopped}; {saved}; resume with: "
                  f"{_resume_command(args, '--resume')}", file=sys.stderr, flush=True)
        return 2
    _say(f"final model: {final}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from r3rl.training.plan import format_plan, load_model_shape

    cfg = _config(args)
    from r3rl.training.plan import parse_memory, this_device_memory

    shape, source = load_model_shape(cfg, args.model_config, preset=args.config)
    device = None
    if args.device_memory is not None:
        gb = parse_memory(args.device_memory)
    elif args.gpu_memory_gb is not None:
        gb = args.gpu_memory_gb
    else:
        gb, device = this_device_memory()
        device += "; size another with --device-memory 80GB"
    print(format_plan(cfg, shape, source, processes=args.processes, gpu_memory_gb=gb,
                      tokens_per_s=args.tokens_per_s, prompt_tokens=args.prompt_tokens, device=device))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from r3rl.api import report
    from r3rl.reporting.report import summary_table
    from r3rl.reporting.run import stale_warnings
    from r3rl.runtime.progress import print_table

    html = report(args.run_dir)
    print_table(summary_table(args.run_dir))
    for warning in stale_warnings(args.run_dir):  # also at the top of the report
        print(f"r3rl report: warning: {warning}", file=sys.stderr)
    print(f"wrote {html} and {html.with_suffix('.md')}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from r3rl.reporting.run import stale_warnings
    from r3rl.reporting.side_by_side import compare_runs, rich_table, write_comparison
    from r3rl.runtime.file_checks import check_output
    from r3rl.runtime.progress import print_table

    check_output(args.output, "--output")  # before the comparison is computed
    data = compare_runs(args.run_dirs)
    print_table(rich_table(data))
    for warning in [w for run_dir in args.run_dirs for w in stale_warnings(run_dir)]:
        print(f"r3rl compare: warning: {warning}", file=sys.stderr)
    md = write_comparison(data, args.output)
    print(f"wrote {md}, {md.with_suffix('.json')} and {md.with_suffix('.png')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from r3rl.demo.run import run_demo
    from r3rl.runtime.file_checks import check_output

    check_output(args.output, "--output")
    return run_demo(output_dir=args.output, quick=args.quick, overrides=args.overrides, compare=args.compare)


def cmd_forgetting(args: argparse.Namespace) -> int:
    from r3rl.evaluation.forgetting import PAPER_TASKS, forgetting, forgetting_table
    from r3rl.runtime.io import write_json
    from r3rl.runtime.progress import print_table

    if len(args.model) != 2:
        raise InputError(f"give --model twice (before, then after), got {len(args.model)}")
    if args.output:
        from r3rl.runtime.file_checks import check_output

        check_output(args.output, "--output", is_file=True)  # before both models are evaluated
    tasks = [t for item in (args.tasks or PAPER_TASKS) for t in item.split(",") if t]
    limit = None if args.limit is None else int(args.limit) if args.limit >= 1 else args.limit
    try:
        result = forgetting(
            args.model[0], args.model[1], tasks, include_path=args.include_path,
            include_defaults=not args.only_include_path, limit=limit, num_fewshot=args.num_fewshot,
            batch_size=args.batch_size, device=args.device, dtype=args.dtype,
            apply_chat_template=args.apply_chat_template, seed=args.seed,
        )
    except ImportError as e:
        print(f"r3rl forgetting: error: {e}", file=sys.stderr)
        return 2
    print_table(forgetting_table(result))
    if args.output:
        write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


def cmd_check_task(args: argparse.Namespace) -> int:
    from r3rl.checks.verifier_check import check_tasks, parse_options, report_table, to_json

    if args.json:
        from r3rl.runtime.file_checks import check_output

        check_output(args.json, "--json", is_file=True)
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
        from r3rl.runtime.io import atomic_write_text

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
    p.add_argument("--overwrite", action="store_true",
                   help="delete an older run's checkpoints and logs in train.output_dir and start again")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="acc@1, acc@2 and the no-reflection control, with 95%% intervals")
    _add_config_args(p)
    p.add_argument("--model", help="model to evaluate (hub id, folder, LoRA adapter folder); overrides model.name_or_path")
    p.add_argument("--output", "-o", help="output folder (default eval.output_dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an evaluation of other weights in the output folder (else it is kept and eval stops)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="memory per device and generated tokens / wall time of a preset, offline")
    _add_config_args(p)
    p.add_argument("--processes", type=int, default=1, help="processes (GPUs) the run will use")
    p.add_argument("--device-memory", help="memory of one device, e.g. 80GB or 24GiB (default: this machine's GPU, "
                        "else its CPU RAM)")
    p.add_argument("--gpu-memory-gb", type=float, help="memory of one device in GB (the same as --device-memory NGB)")
    p.add_argument("--tokens-per-s", type=float, help="measured generation speed per device (else an assumption, labelled)")
    p.add_argument("--prompt-tokens", type=int, help="templated task prompt length (else an assumption, labelled)")
    p.add_argument("--model-config", help="folder or config.json of the model (default: model.name_or_path, else the "
                        "preset's models/<name>/config.json, else the local HF cache; offline)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("report", help="turn a run folder into report.md / report.html with plots")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="runs evaluated on the same examples side by side, with paired tests")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (their eval_after/) or eval folders")
    p.add_argument("--output", "-o", default="runs/compare", help="folder for compare.md, compare.json, compare.png")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="the offline demo: evaluate, mine, train, evaluate, report (CPU, minutes)")
    p.add_argument("--output", "-o", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test, no significance)")
    p.add_argument("--compare", action="store_true",
                   help="also train the first_attempt baseline (plain GRPO) with the same budget into OUTPUT/first_attempt, "
                        "evaluate it alike and compare both runs (OUTPUT/compare)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("forgetting", help="lm-evaluation-harness on a model before and after training, with differences")
    p.add_argument("--model", action="append", required=True, metavar="MODEL",
                   help="give twice: BEFORE then AFTER (hub id, folder, LoRA adapter folder, or demo)")
    p.add_argument("--tasks", nargs="+", metavar="TASK",
                   help="lm-eval task or group names (default: the paper's mmlu_pro gsm8k hellaswag minerva_math)")
    p.add_argument("--include-path", metavar="DIR", help="folder of your own lm-eval task YAMLs")
    p.add_argument("--only-include-path", action="store_true",
                   help="index only --include-path, not lm-eval's built-in tasks (saves ~30 s)")
    p.add_argument("--limit", type=float, help="documents per task (an integer, or a fraction below 1)")
    p.add_argument("--num-fewshot", type=int, help="override each task's number of shots")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16")
    p.add_argument("--apply-chat-template", action="store_true", help="wrap prompts in the model's chat template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", metavar="FILE", help="write both runs and the differences as JSON")
    p.set_defaults(func=cmd_forgetting)

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


def _one_line_warnings() -> None:
    """r3rl's own warnings (a renamed config key, no learning signal) print as one line, without the
    Python source line that issued them; library warnings keep Python's format."""
    import warnings

    python_format = getattr(warnings.formatwarning, "python_format", warnings.formatwarning)

    def fmt(message, category, filename, lineno, line=None):
        if category.__module__.partition(".")[0] == "r3rl":  # defined by r3rl (RenamedConfigWarning ...)
            return f"r3rl: warning: {message}\n"
        return python_format(message, category, filename, lineno, line)

    fmt.python_format = python_format  # type: ignore[attr-defined]  # main() may run many times in one process
    warnings.formatwarning = fmt


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _one_line_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Overrides may come before, between or after options (`eval -c F a=1 -o DIR b=2`): argparse hands
    # the ones after an option back as unknown, and they join the others in order.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or "=" not in x or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.argv = argv  # the exact arguments, for the resume hint after Ctrl-C
    try:
        return int(args.func(args) or 0)
    # Only errors a user can fix become one line (r3rl/errors.py): r3rl's own types (a config field, a data
    # row, a damaged file, a verifier that keeps raising) and OSError (a missing path, a full disk, a
    # read-only folder; each names its path). Anything else is a bug and keeps its traceback.
    except (R3RLError, OSError) as e:
        print(f"r3rl {args.command}: error: {e}", file=sys.stderr)
        return 2
