"""Did training make the model forget? lm-evaluation-harness on a model before and after, differenced.

The paper reports under one point of change on MMLU-Pro, GSM8K, HellaSwag and MATH after its
reflection training; `r3rl forgetting --model BEFORE --model AFTER` checks that claim on a user's
own run. Both models go through lm-eval's Python API (`lm_eval.simple_evaluate` with its `HFLM`
wrapper around a model r3rl loads, so LoRA adapter folders and the built-in `demo` model work), with
the same tasks, shots, limit and seeds.

Standard errors: lm-eval's own for each model. For the difference, the two runs score the same
documents, so where both runs logged a per-document value (every task, not a group) the difference's
standard error is the paired one, sd(after_i - before_i) / sqrt(n); it is smaller than the unpaired
sqrt(se_before^2 + se_after^2) whenever the models agree on which items are easy. Group rows
(`mmlu_pro`, `minerva_math`) aggregate subtasks and use the unpaired formula; the table says which.
"""

from __future__ import annotations

import gc
import math
from dataclasses import asdict, dataclass
from typing import Any

from r3rl.errors import InputError

# lm-eval names of the paper's forgetting benchmarks; MATH is Minerva's 4-shot version of Hendrycks MATH.
PAPER_TASKS = ("mmlu_pro", "gsm8k", "hellaswag", "minerva_math")
INSTALL_HINT = 'lm-evaluation-harness is not installed; install it with `pip install "r3rl[lm-eval]"`.'
# Keys of an lm-eval results row that are not metrics.
_NOT_METRICS = {"name", "alias", "sample_len", "samples", " ", "group"}
# What of lm-eval's output is kept in forgetting.json (the rest is environment dumps and full configs).
_KEEP = ("results", "groups", "group_subtasks", "n-samples", "versions", "n-shot", "higher_is_better", "lm_eval_version")


@dataclass
class Row:
    """One metric of one task, before and after, with standard errors (None where lm-eval has none)."""

    task: str
    metric: str  # lm-eval's "metric,filter", e.g. "exact_match,strict-match"
    before: float
    before_se: float | None
    after: float
    after_se: float | None
    diff: float
    diff_se: float | None
    paired: bool  # diff_se from per-document differences (True) or sqrt(se_b^2 + se_a^2) (False)
    n: int | None  # documents scored (per model)


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e


def task_manager(include_path: str | None = None, include_defaults: bool = True):
    """lm-eval's TaskManager over its built-in tasks and/or a folder of task YAMLs.

    Indexing the ~13k built-in YAMLs takes tens of seconds, so it is built once for both models;
    `include_defaults=False` indexes only `include_path` (a user's own tasks, the tests).
    """
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    if not include_defaults and not include_path:
        raise InputError("with the built-in lm-eval tasks left out, an include path with task YAMLs is needed")
    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def check_tasks(manager, tasks: list[str]) -> None:
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" under {manager.include_path}" if manager.include_path else "; give --include-path for your own task YAMLs"
        raise InputError(f"lm-eval knows no task {', '.join(map(repr, unknown))}{where}")


def run_lm_eval(
    model: str,
    tasks: list[str],
    manager,
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str = "auto",
    apply_chat_template: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """lm-eval's output for one model (with per-document samples); the model is freed afterwards."""
    _require_lm_eval()
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from r3rl.engine import load_model

    net, tokenizer = load_model(model, dtype=dtype, device=device)  # resolves aliases such as `demo`
    lm = HFLM(pretrained=net, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        apply_chat_template=apply_chat_template, log_samples=True,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    del lm, net
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _metrics(row: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """'metric,filter' -> (value, stderr or None) for the numeric metrics of one results row."""
    found = {}
    for key, value in row.items():
        if key in _NOT_METRICS or "_stderr," in key or "," not in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        se = row.get(f"{metric}_stderr,{filt}")
        found[key] = (float(value), float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None)
    return found


def _leaf_samples(run: dict[str, Any], task: str) -> list[tuple[str, dict[str, Any]]] | None:
    """(leaf task, sample) pairs of a task, or of every leaf under a group; None if any is missing."""
    samples = run.get("samples") or {}
    if task in samples:
        return [(task, s) for s in samples[task]]
    subtasks = (run.get("group_subtasks") or {}).get(task)
    if not subtasks:
        return None
    pooled: list[tuple[str, dict[str, Any]]] = []
    for sub in subtasks:
        leaf = _leaf_samples(run, sub)
        if leaf is None:
            return None
        pooled += leaf
    return pooled


def _per_doc(samples: list[tuple[str, dict[str, Any]]], metric_key: str) -> dict[tuple[str, int], float] | None:
    """(leaf task, doc_id) -> the metric's value under its filter; None unless every value is numeric."""
    metric, filt = metric_key.split(",", 1)
    values = {}
    for leaf, s in samples:
        if s.get("filter", "none") != filt:
            continue
        v = s.get(metric)
        if not isinstance(v, (int, float, bool)):
            return None
        values[(leaf, int(s["doc_id"]))] = float(v)
    return values or None


def paired_diff(before: dict[Any, float], after: dict[Any, float]) -> tuple[float, float, int] | None:
    """(mean difference, its standard error, n) when both runs scored the same n >= 2 documents."""
    n = len(before)
    if n < 2 or set(before) != set(after):
        return None
    d = [after[k] - before[k] for k in before]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return mean, math.sqrt(var / n), n


def _is_mean_of(values: dict[Any, float], reported: float) -> bool:
    # The per-document values explain the reported score only when it is their plain mean (acc,
    # exact_match; a group weighted by size). Corpus-level metrics (BLEU, F1) and unweighted group
    # means are not, and keep the unpaired standard error.
    return abs(sum(values.values()) / len(values) - reported) < 1e-9


def compare(before: dict[str, Any], after: dict[str, Any], tasks: list[str]) -> list[Row]:
    """Rows for the requested tasks (groups included), in request order, every metric both runs report."""
    rows: list[Row] = []
    for task in tasks:
        rb, ra = before["results"].get(task), after["results"].get(task)
        if rb is None or ra is None:
            raise InputError(f"lm-eval returned no results for task {task!r}")
        mb, ma = _metrics(rb), _metrics(ra)
        samples_b, samples_a = _leaf_samples(before, task), _leaf_samples(after, task)
        n_reported = (before.get("n-samples") or {}).get(task, {}).get("effective") or rb.get("sample_len")
        for key in [k for k in mb if k in ma]:
            (vb, seb), (va, sea) = mb[key], ma[key]
            paired = None
            if samples_b and samples_a:
                db, da = _per_doc(samples_b, key), _per_doc(samples_a, key)
                if db and da and _is_mean_of(db, vb) and _is_mean_of(da, va):
                    paired = paired_diff(db, da)
            if paired is not None:
                diff_se, n = paired[1], paired[2]
            else:
                diff_se = math.sqrt(seb**2 + sea**2) if seb is not None and sea is not None else None
                n = n_reported
            rows.append(Row(task, key, vb, seb, va, sea, va - vb, diff_se, paired is not None, n))
    return rows


def forgetting(
    before: str,
    after: str,
    tasks: list[str] | tuple[str, ...] = PAPER_TASKS,
    include_path: str | None = None,
    include_defaults: bool = True,
    **lm_eval_kwargs: Any,
) -> dict[str, Any]:
    """Run lm-eval on both models and difference them: {"rows": [...], "before": ..., "after": ...}.

    lm_eval_kwargs: limit, num_fewshot, batch_size, device, dtype, apply_chat_template, seed.
    """
    tasks = list(tasks)
    manager = task_manager(include_path, include_defaults)
    check_tasks(manager, tasks)  # before loading any model: a typo should not cost an evaluation
    runs = {}
    for name, model in (("before", before), ("after", after)):
        runs[name] = run_lm_eval(model, tasks, manager, **lm_eval_kwargs)
    rows = compare(runs["before"], runs["after"], tasks)
    return {
        "models": {"before": before, "after": after},
        "tasks": tasks,
        "settings": {"include_path": include_path, "include_defaults": include_defaults, **lm_eval_kwargs},
        "rows": [asdict(r) for r in rows],
        **{name: {k: run[k] for k in _KEEP if k in run} for name, run in runs.items()},
    }


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def forgetting_table(result: dict[str, Any]):
    """A rich table: each metric before and after (x100, ± stderr) and the difference with its stderr."""
    from rich.table import Table

    m = result["models"]
    table = Table(title=f"forgetting: {m['before']} -> {m['after']} (points; ± one standard error)")
    for col in ("task", "metric", "n"):
        table.add_column(col)
    for col in ("before", "after", "after - before", "stderr of diff"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(
            r["task"], r["metric"], str(r["n"] if r["n"] is not None else ""),
            f"{_pts(r['before'])} ± {_pts(r['before_se'])}", f"{_pts(r['after'])} ± {_pts(r['after_se'])}",
            _pts(r["diff"], signed=True), f"{_pts(r['diff_se'])} ({'paired' if r['paired'] else 'unpaired'})",
        )
    return table
