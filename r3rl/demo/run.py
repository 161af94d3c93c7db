"""`r3rl demo`: the whole pipeline offline on CPU, with the code paths a real user takes.

    1. evaluate the built-in model (acc@1, acc@2, no-reflection control) -> RUN/eval_before
    2. mine failures on the train split                                  -> RUN/failures.jsonl
    3. train reflections with GRPO (r3rl.training.trainer)        -> RUN/metrics.jsonl, RUN/final
    4. evaluate the trained model, loaded from RUN/final                 -> RUN/eval_after, RUN/final/README.md
    5. write the report                                                  -> RUN/report.html, RUN/report.md
  with --compare, then:
    6. train the first_attempt baseline (plain GRPO on first attempts, train.objective=first_attempt)
       from the same base model on the same failure set, same budget      -> RUN/first_attempt/
    7. evaluate it on the same eval set (RUN/eval_before copied there)    -> RUN/first_attempt/eval_after
    8. both runs side by side (`r3rl compare RUN RUN/first_attempt`)      -> RUN/compare/compare.md, .json, .png

Settings: r3rl/demo/demo.yaml (their only source). The model and how its starting
behaviour was made: r3rl/demo/model/README.md.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
MARKER = ".r3rl-demo"
BASELINE = "first_attempt"  # the objective `--compare` trains next to the paper's, and its run folder under RUN


def _fresh(out: Path) -> None:
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a demo run folder; choose another --output")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `r3rl demo`; the next demo run replaces this folder\n")


def demo_config(out: Path, quick: bool = False, overrides: list[str] | None = None):
    from r3rl.config import load_config

    forced = [f"train.output_dir={out}", f"failures.path={out}/failures.jsonl"]
    if quick:
        forced += ["train.steps=4", "eval.num_examples=64", "failures.num_examples=64", "train.save_every=2"]
    return load_config(DEMO_CONFIG, forced + list(overrides or []))


def run_demo(output_dir: str = "runs/demo", quick: bool = False, overrides: list[str] | None = None,
             compare: bool = False) -> int:
    import torch

    from r3rl.engine.provenance import model_identity
    from r3rl.environment.stack import build_rollout
    from r3rl.evaluation.accuracy import evaluate_model
    from r3rl.mining.failure_set import mine
    from r3rl.reporting.console_tables import results_table
    from r3rl.reporting.model_card import publish_final, push_folder, write_model_cards
    from r3rl.reporting.report import build_report, summary_table
    from r3rl.runtime.progress import print_table
    from r3rl.tasks import load_task
    from r3rl.training.trainer import train

    if not torch.cuda.is_available():
        # The demo model's matmuls are too small to gain from threads, and on a shared machine
        # OpenMP threads fighting other processes made a training step 20x slower (measured).
        torch.set_num_threads(1)
    out = Path(output_dir)
    _fresh(out)
    cfg = demo_config(out, quick, overrides)
    task = load_task(cfg.task.name, **cfg.task.options)
    times: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        times[name] = time.perf_counter() - t0
        print(f"[demo] {name}: {times[name]:.0f} s", flush=True)

    t = time.perf_counter()
    roll = build_rollout(cfg, task=task)
    with roll.engine:  # every engine the demo opens is closed, on error and Ctrl-C too
        before = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out / "eval_before", model_name=cfg.model.name_or_path,
                                identity=model_identity(cfg.model))
        print_table(results_table(before, "before training"))
        stage("evaluate before", t)

        t = time.perf_counter()
        summary = mine(roll, cfg.failures, cfg.seed, model=cfg.model, task_options=cfg.task.options)
        print(f"[demo] failure set: {summary['failure_set_size']} of {summary['examples']} examples failed at least once "
              f"(first-attempt pass rate {summary['attempt_pass_rate']:.1%})")
    del roll
    stage("mine failures", t)

    t = time.perf_counter()
    final = train(cfg)
    publish_final(out, final, cfg.train.push_to_hub, cfg.train.hub_model_id)
    stage("train", t)

    t = time.perf_counter()
    cfg.model.name_or_path = str(final)
    roll = build_rollout(cfg, task=task)
    with roll.engine:
        after = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out / "eval_after", model_name=str(final),
                               identity=model_identity(cfg.model))
    print_table(results_table(after, "after training"))
    # The card written at the end of training had no "after" numbers yet.
    write_model_cards(out, cfg.train.hub_model_id or None)
    if cfg.train.push_to_hub:
        push_folder(final, cfg.train.hub_model_id, allow_patterns=["README.md"], commit_message="Model card with evaluation")
    stage("evaluate after", t)

    t = time.perf_counter()
    html = build_report(out)
    stage("report", t)
    print_table(summary_table(out))
    print(f"[demo] total {sum(times.values()) / 60:.1f} min. Report: {html} (and {html.with_suffix('.md')})")
    if compare:
        md = _compare_with_baseline(out, task, quick, overrides, stage)
        print(f"[demo] with the baseline: total {sum(times.values()) / 60:.1f} min. Comparison: {md}")
    return 0


def _compare_with_baseline(out: Path, task, quick: bool, overrides: list[str] | None, stage) -> Path:
    """Steps 6-8: the first_attempt baseline with the demo's budget, evaluated alike, compared with the demo run."""
    from r3rl.engine.provenance import model_identity
    from r3rl.environment.stack import build_rollout
    from r3rl.evaluation.accuracy import evaluate_model
    from r3rl.reporting.console_tables import results_table
    from r3rl.reporting.side_by_side import collect, compare_runs, comparisons, rich_table, write_comparison
    from r3rl.runtime.progress import print_table
    from r3rl.training.trainer import train

    t = time.perf_counter()
    base_out = out / BASELINE
    # the same settings and failure set (already mined: training only checks its ids), another objective
    cfg = demo_config(base_out, quick, list(overrides or []) + [f"failures.path={out}/failures.jsonl",
                                                                f"train.objective={BASELINE}"])
    final = train(cfg)
    stage(f"train baseline ({BASELINE})", t)

    t = time.perf_counter()
    shutil.copytree(out / "eval_before", base_out / "eval_before")  # the same base model, evaluated once
    cfg.model.name_or_path = str(final)
    roll = build_rollout(cfg, task=task)
    with roll.engine:
        after = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=base_out / "eval_after", model_name=str(final),
                               identity=model_identity(cfg.model))
    print_table(results_table(after, f"after training ({BASELINE})"))
    stage(f"evaluate baseline ({BASELINE})", t)

    t = time.perf_counter()
    data = compare_runs([out, base_out])  # base (the shared eval_before), the demo run, the baseline
    # compare_runs tests each run against the base row; the question here is the two objectives head to head
    trained = [r for r in collect([out, base_out]) if r.label != "base"]
    data["objectives"] = comparisons(trained)
    data["extra_sections"] = [_head_to_head(data["objectives"])]
    print_table(rich_table(data))
    print(_head_to_head(data["objectives"]))
    md = write_comparison(data, out / "compare")
    stage("compare", t)
    return md


def _head_to_head(tests: list[dict]) -> str:
    """compare.md's section on the reflection run against the baseline, paired on the same trials."""
    lines = [f"## The two objectives head to head: {tests[0]['second']} ({BASELINE} baseline) - {tests[0]['first']} (reflection)",
             "", "Paired on the same trials; p adjusted by Holm-Bonferroni over these two tests.", "",
             "| metric | difference (baseline - reflection, pts) | 95% interval | discordant (b / c) | p | p (Holm) | test |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for c in tests:
        lo, hi = c["difference_ci"]
        lines.append(f"| {c['metric']} | {100 * c['difference']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                     f"{c['first_only']} / {c['second_only']} | {c['p_value']:.3g} | {c['p_holm']:.3g} | {c['test']} |")
    return "\n".join(lines)
