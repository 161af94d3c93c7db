"""First-try and second-try accuracy with confidence intervals, and the no-reflection control.

acc@1                 first attempt passes
acc@2                 first attempt passes, or the retry after a reflection passes
acc@2_no_reflection   first attempt passes, or a retry passes after only "try again" (the control:
                      how much of acc@2 is a second sample rather than the reflection)
With rollout.rounds = R > 1, acc@{R+1} counts success within R reflect/retry rounds.
Intervals are 95%: Wilson over trials with one sample per example, a bootstrap over examples with
several (`trial_statistics`); acc@2 vs the control is a paired test (exact McNemar), see stats.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r3rl.config import EvalConfig
from r3rl.io import atomic_write_text, write_json
from r3rl.progress import progress_bar
from r3rl.rollout import Failure, Rollout, derive_seed
from r3rl.evaluation import stats
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
                group = task.breakdown(a.example)  # per-group results (BFCL categories); see Task.summarize
                if group is not None:
                    rec["group"] = group
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
    if any("group" in r for r in records):
        results["by_group"] = task.summarize(records)
    results.update(trial_statistics(records, rounds=rounds, control=ecfg.no_reflection_control))
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "episodes.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_json(out / "results.json", results)
    return results


def trial_statistics(records: list[dict[str, Any]], *, rounds: int = 1, control: bool = True) -> dict[str, Any]:
    """Intervals that respect how trials are grouped, and the paired acc@2 vs control test.

    records are episodes.jsonl rows (example_id, attempt_ok, retry_ok, no_reflection_retry_ok,
    rounds). Samples of one example are correlated, so with several per example the acc@k
    intervals (replacing the Wilson ones) and the retry_fix_rate interval come from a bootstrap
    over examples. acc@2 and the control are scored on the same trials with the same seeds, so
    they are compared by a paired test (McNemar), reported with the paired difference.
    """
    if not records:
        return {}
    key = lambda r: r["example_id"]  # noqa: E731
    passed: dict[str, Any] = {
        "acc@1": lambda r: r["attempt_ok"],
        "acc@2": lambda r: r["attempt_ok"] or r["retry_ok"],
    }
    if control:
        passed["acc@2_no_reflection"] = lambda r: r["attempt_ok"] or r["no_reflection_retry_ok"]
    for k in range(2, rounds + 1):
        passed[f"acc@{k + 1}"] = lambda r, k=k: r["attempt_ok"] or any(x["retry_ok"] for x in r.get("rounds", [])[:k])
    out: dict[str, Any] = {}
    for name, ok in passed.items():
        _, ci, method = stats.clustered_proportion((key(r), ok(r)) for r in records)
        out[f"{name}_ci"] = list(ci)
    out["intervals"] = method
    failed = [(key(r), r["retry_ok"]) for r in records if not r["attempt_ok"]]
    _, fix_ci, fix_method = stats.clustered_proportion(failed)
    out["retry_fix_rate_ci"] = list(fix_ci)
    out["retry_fix_rate_interval"] = fix_method
    if control:
        cmp = stats.paired_comparison((key(r), passed["acc@2_no_reflection"](r), passed["acc@2"](r)) for r in records)
        out["comparisons"] = {"acc@2_vs_no_reflection": cmp.to_json()}
    return out


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
    cmp = results.get("comparisons", {}).get("acc@2_vs_no_reflection")
    if cmp:
        lo, hi = cmp["difference_ci"]
        table.caption = (f"acc@2 - control: {100 * cmp['difference']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}], "
                         f"p = {cmp['p_value']:.3g} ({cmp['test']})")
    return table


def _metric_order(key: str) -> tuple[int, str]:
    return (int(key[4]) if key[4].isdigit() else 9, key)


def group_table(results: dict[str, Any]):
    """A rich table of results["by_group"] (Task.breakdown / Task.summarize), or None when there is none."""
    from rich.table import Table

    by_group = results.get("by_group") or {}
    groups = by_group.get("groups") or {}
    if not groups:
        return None
    table = Table(title=f"by group: {results.get('task')}")
    for column in ("group", "n", "acc@1", "acc@2"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for name, g in groups.items():
        table.add_row(name, str(g["n"]), f"{g['acc@1']:.1%}", f"{g['acc@2']:.1%}")
    for name, g in by_group.items():  # task-level summaries, e.g. BFCL's non_live_ast / live_ast
        if name != "groups" and isinstance(g, dict) and "acc@1" in g:
            partial = "" if g.get("complete", True) else " (partial)"
            table.add_row(f"{name}{partial}", str(g.get("n", "")), f"{g['acc@1']:.1%}", f"{g['acc@2']:.1%}")
    return table
