"""`r3rl demo`: the whole pipeline offline on CPU, with the code paths a real user takes.

    1. evaluate the built-in model (acc@1, acc@2, no-reflection control) -> RUN/eval_before
    2. mine failures on the train split                                  -> RUN/failures.jsonl
    3. train reflections with GRPO (r3rl.training.trainer)        -> RUN/metrics.jsonl, RUN/final
    4. evaluate the trained model, loaded from RUN/final                 -> RUN/eval_after, RUN/final/README.md
    5. write the report                                                  -> RUN/report.html, RUN/report.md

Settings: r3rl/demo/demo.yaml (their only source). The model and how its starting
behaviour was made: r3rl/demo/model/README.md.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
MARKER = ".r3rl-demo"


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


def run_demo(output_dir: str = "runs/demo", quick: bool = False, overrides: list[str] | None = None) -> int:
    import torch

    from r3rl.evaluation.accuracy import evaluate_model, results_table
    from r3rl.mining import mine
    from r3rl.progress import print_table
    from r3rl.reporting.model_card import publish_final, push_folder, write_model_cards
    from r3rl.reporting.report import build_report, summary_table
    from r3rl.stack import build_rollout
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
    before = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out / "eval_before", model_name=cfg.model.name_or_path)
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
    after = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out / "eval_after", model_name=str(final))
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
    return 0
