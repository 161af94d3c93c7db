"""First-try and second-try accuracy with confidence intervals, and the no-reflection control.

acc@1                 first attempt passes
acc@2                 first attempt passes, or the retry after a reflection passes
acc@2_no_reflection   first attempt passes, or a retry passes after only "try again" (the control:
                      how much of acc@2 is a second sample rather than the reflection)
With rollout.rounds = R > 1, acc@{R+1} counts success within R reflect/retry rounds.
Intervals are Wilson 95% over all (example, sample) trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r3rl.config import EvalConfig
from r3rl.io import atomic_write_text, write_json
from r3rl.progress import progress_bar
from r3rl.rollout import Failure, Rollout, derive_seed
from r3rl.evaluation.stats import wilson_interval


def _acc(key: str, hits: int, n: int) -> dict[str, Any]:
    return {key: hits / n if n else 0.0, f"{key}_ci": list(wilson_interval(hits, n)), f"{key}_hits": hits}


def evaluate_model(
    roll: Rollout,
    ecfg: EvalConfig,
    seed: int,
    *,
    num_examples: int | None = None,
    output_dir: str | Path | None = None,
    model_name: str = "",
    seed_tag: Any = "eval",
    show_progress: bool = True,
    chunk_size: int = 64,
) -> dict[str, Any]:
    """Evaluate on the held-out split; writes results.json and episodes.jsonl when output_dir is given."""
    task = roll.task
    n_ex = num_examples or ecfg.num_examples
    examples = task.load_examples(ecfg.split, n_ex, seed=seed)
    if not examples:
        raise ValueError(f"task {task.name!r} returned no examples for split {ecfg.split!r}")
    samples = ecfg.samples_per_example
    rounds = roll.cfg.rounds
    base_seed = seed
    records: list[dict[str, Any]] = []
    bar = progress_bar(total=len(examples), desc="eval", disable=not show_progress)
    for c in range(0, len(examples), chunk_size):
        chunk = examples[c : c + chunk_size]
        seed = derive_seed(base_seed, seed_tag, c)
        attempts = roll.attempts(chunk, n=samples, seed=seed)
        failed = [(i, j, a) for i, row in enumerate(attempts) for j, a in enumerate(row) if not a.verdict.ok]
        failures = [Failure(a.example, a.text, a.verdict.reason) for _, _, a in failed]
        by_trial: dict[tuple[int, int], list] = {}
        controls = {}
        if failures:
            eps = roll.reflect_and_retry(failures, group_size=1, seed=seed)
            for e in eps:
                i, j, _ = failed[e.extra["failure_index"]]
                by_trial.setdefault((i, j), []).append(e)
            if ecfg.no_reflection_control:
                for (i, j, _), g in zip(failed, roll.retry_without_reflection(failures, seed=seed)):
                    controls[(i, j)] = (g.text, roll.verify(chunk[i], g.text))
        for i, row in enumerate(attempts):
            for j, a in enumerate(row):
                eps = sorted(by_trial.get((i, j), []), key=lambda e: e.round)
                ctrl = controls.get((i, j))
                rec = {
                    "example_id": task.example_id(a.example),
                    "sample": j,
                    "prompt": task.prompt(a.example),
                    "attempt_text": a.text,
                    "attempt_ok": a.verdict.ok,
                    "attempt_reason": a.verdict.reason,
                    "reflection_text": eps[0].reflection_text if eps else "",
                    "retry_text": eps[0].retry_text if eps else "",
                    "retry_ok": bool(eps and eps[0].retry_ok),
                    "retry_reason": eps[0].retry_reason if eps else "",
                    "no_reflection_retry_text": ctrl[0] if ctrl else "",
                    "no_reflection_retry_ok": bool(ctrl and ctrl[1].ok),
                }
                if rounds > 1:
                    rec["rounds"] = [
                        {"reflection_text": e.reflection_text, "retry_text": e.retry_text, "retry_ok": e.retry_ok}
                        for e in eps
                    ]
                records.append(rec)
        bar.update(len(chunk))
    bar.close()

    n = len(records)
    results: dict[str, Any] = {"task": task.name, "model": model_name, "n": len(examples), "samples": samples, "trials": n}
    ok1 = sum(r["attempt_ok"] for r in records)
    results.update(_acc("acc@1", ok1, n))
    results.update(_acc("acc@2", sum(r["attempt_ok"] or r["retry_ok"] for r in records), n))
    if ecfg.no_reflection_control:
        results.update(_acc("acc@2_no_reflection", sum(r["attempt_ok"] or r["no_reflection_retry_ok"] for r in records), n))
    for k in range(2, rounds + 1):
        hits = sum(r["attempt_ok"] or any(x["retry_ok"] for x in r.get("rounds", [])[:k]) for r in records)
        results.update(_acc(f"acc@{k + 1}", hits, n))
    n_fail = n - ok1
    results["verifier_errors"] = roll.verify_errors
    results["retry_fix_rate"] = sum(r["retry_ok"] for r in records if not r["attempt_ok"]) / n_fail if n_fail else 0.0
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_json(out / "results.json", results)
    return results


def results_table(results: dict[str, Any], title: str = "evaluation"):
    """A rich table of one results.json."""
    from rich.table import Table

    table = Table(title=f"{title}: {results.get('task')} / {results.get('model')} (n={results.get('trials')})")
    table.add_column("metric")
    table.add_column("accuracy", justify="right")
    table.add_column("95% interval", justify="right")
    for key in sorted((k for k in results if k.startswith("acc@") and not k.endswith(("_ci", "_hits"))), key=_metric_order):
        lo, hi = results[f"{key}_ci"]
        table.add_row(key, f"{results[key]:.1%}", f"[{lo:.1%}, {hi:.1%}]")
    return table


def _metric_order(key: str) -> tuple[int, str]:
    return (int(key[4]) if key[4].isdigit() else 9, key)
