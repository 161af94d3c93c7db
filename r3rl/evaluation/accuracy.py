"""First-try and second-try accuracy with confidence intervals, and the no-reflection control.

acc@1                 first attempt passes
acc@2                 first attempt passes, or the retry after a reflection passes
acc@2_no_reflection   first attempt passes, or a retry passes after only "try again" (the control:
                      how much of acc@2 is a second sample rather than the reflection)
With rollout.rounds = R > 1, acc@{R+1} counts success within R reflect/retry rounds.
Intervals are 95%: Wilson over trials with one sample per example, a bootstrap over examples with
several (`trial_statistics`); acc@2 vs the control is a paired test (exact McNemar), see stats.py.

Sampling: eval.temperature / top_p / max_*_tokens replace the generation section's settings
during evaluation (unset = the generation section's). Work is shared over processes in fixed
chunks and written as it is made, so an interrupted evaluation resumes (see evaluate_model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from r3rl.config import EvalConfig, to_dict
from r3rl.distributed import chunk_ranges, processes
from r3rl.errors import InputError
from r3rl.io import JsonlWriter, atomic_write_text, iter_jsonl, truncate_partial_tail, write_json
from r3rl.progress import GenerationProgress
from r3rl.rollout import Failure, Rollout, derive_seed
from r3rl.evaluation import stats
from r3rl.evaluation.stats import wilson_interval


def _acc(key: str, hits: int, n: int) -> dict[str, Any]:
    return {key: hits / n if n else 0.0, f"{key}_ci": list(wilson_interval(hits, n)), f"{key}_hits": hits}


@contextmanager
def eval_sampling(roll: Rollout, ecfg: EvalConfig) -> Iterator[Rollout]:
    """The rollout with eval.temperature / top_p / max_*_tokens in place of the generation section's,
    for the duration of the block (the rollout object is shared with the trainer, so it is restored)."""
    over: dict[str, Any] = {}
    if ecfg.temperature is not None:
        over.update({f"{s}_temperature": ecfg.temperature for s in ("attempt", "reflection", "retry")})
    if ecfg.top_p is not None:
        over["top_p"] = ecfg.top_p
    for stage in ("attempt", "reflection", "retry"):
        limit = getattr(ecfg, f"max_{stage}_tokens")
        if limit is not None:
            over[f"max_{stage}_tokens"] = limit
    saved = roll.gen
    roll.gen = dataclasses.replace(saved, **over)
    try:
        yield roll
    finally:
        roll.gen = saved


def _eval_chunk(roll: Rollout, ecfg: EvalConfig, chunk: list, seed: int, progress: GenerationProgress) -> list[dict[str, Any]]:
    """The trial records of one chunk of examples: samples_per_example trials per example, in order."""
    task = roll.task
    progress.stage("attempt")
    attempts = roll.attempts(chunk, n=ecfg.samples_per_example, seed=seed)
    failed = [(i, j, a) for i, row in enumerate(attempts) for j, a in enumerate(row) if not a.verdict.ok]
    failures = [Failure(a.example, a.text, a.verdict.reason) for _, _, a in failed]
    by_trial: dict[tuple[int, int], list] = {}
    controls = {}
    if failures:
        progress.stage("reflection + retry")
        for e in roll.reflect_and_retry(failures, group_size=1, seed=seed):
            i, j, _ = failed[e.extra["failure_index"]]
            by_trial.setdefault((i, j), []).append(e)
        if ecfg.no_reflection_control:
            progress.stage("control")
            for (i, j, _), g in zip(failed, roll.retry_without_reflection(failures, seed=seed)):
                controls[(i, j)] = (g.text, roll.verify(chunk[i], g.text))
    records = []
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
            if roll.cfg.rounds > 1:
                rec["rounds"] = [
                    {"reflection_text": e.reflection_text, "retry_text": e.retry_text, "retry_ok": e.retry_ok}
                    for e in eps
                ]
            records.append(rec)
    return records


class _EpisodeLog:
    """episodes.jsonl written chunk by chunk, with eval_state.json saying how many chunks are final.

    A rerun with the same settings after an interruption keeps the finished chunks and goes on;
    a finished evaluation, or one with other settings, is started over.
    """

    def __init__(self, out: Path, fingerprint: dict[str, Any]):
        self.episodes = out / "episodes.jsonl"
        self.state_path = out / "eval_state.json"
        self.fingerprint = fingerprint
        out.mkdir(parents=True, exist_ok=True)

    def resume(self) -> tuple[int, list[dict[str, Any]], int, str]:
        """(chunks already done, their records, their verifier errors, a note for the user)."""
        state = json.loads(self.state_path.read_text()) if self.state_path.exists() else None
        if state and not state.get("complete") and state.get("fingerprint") == self.fingerprint and self.episodes.exists():
            truncate_partial_tail(self.episodes)
            records = list(iter_jsonl(self.episodes))
            if len(records) >= state["records"]:
                records = records[: state["records"]]  # lines of a chunk cut short are sampled again
                atomic_write_text(self.episodes, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                return (state["chunks_done"], records, state.get("verifier_errors", 0),
                        f"resuming: {state['chunks_done']} chunk(s) already evaluated")
        atomic_write_text(self.episodes, "")
        self._save(0, 0, 0, complete=False)
        return 0, [], 0, ""

    def append(self, records: list[dict[str, Any]], chunks_done: int, total_records: int, errors: int) -> None:
        with JsonlWriter(self.episodes) as w:
            w.write_many(records)
        self._save(chunks_done, total_records, errors, complete=False)

    def finish(self, chunks_done: int, total_records: int, errors: int) -> None:
        self._save(chunks_done, total_records, errors, complete=True)

    def _save(self, chunks_done: int, records: int, errors: int, complete: bool) -> None:
        write_json(self.state_path, {"fingerprint": self.fingerprint, "chunks_done": chunks_done,
                                     "records": records, "verifier_errors": errors, "complete": complete})


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
    chunk_size: int | None = None,
    accelerator: Any = None,
) -> dict[str, Any]:
    """Evaluate on the held-out split; writes results.json and episodes.jsonl when output_dir is given.

    Every process calls it: chunk k of the examples is evaluated on rank k % world with a seed
    derived from (seed, seed_tag, chunk offset), the records are gathered in chunk order, the main
    process appends them to episodes.jsonl as each round of chunks ends, and every rank returns
    the same results. An interrupted run into the same output_dir resumes after its last finished
    chunk and ends with the same files as an uninterrupted one.
    """
    procs = processes(accelerator)
    task = roll.task
    examples = task.load_examples(ecfg.split, num_examples or ecfg.num_examples, seed=seed)
    if not examples:
        raise InputError(f"task {task.name!r} returned no examples for split {ecfg.split!r}")
    chunk_size = chunk_size or ecfg.chunk_size
    chunks = chunk_ranges(len(examples), chunk_size)
    log = None
    done, records, errors = 0, [], 0
    with eval_sampling(roll, ecfg):
        if output_dir is not None and procs.is_main:
            fingerprint = {
                "task": task.name, "model": model_name, "seed": seed, "seed_tag": repr(seed_tag), "chunk_size": chunk_size,
                "examples": hashlib.sha1("\n".join(task.example_id(ex) for ex in examples).encode()).hexdigest(),
                "eval": {k: v for k, v in to_dict(ecfg).items() if k not in ("output_dir", "num_examples", "chunk_size")},
                "generation": to_dict(roll.gen), "rollout": to_dict(roll.cfg),
            }
            log = _EpisodeLog(Path(output_dir), fingerprint)
            done, records, errors, note = log.resume()
            if note and show_progress:
                print(f"eval: {note} in {output_dir}", file=sys.stderr, flush=True)
        done = procs.broadcast(done)
        progress = GenerationProgress(roll.engine, total=len(examples), initial=sum(map(len, chunks[:done])),
                                      desc=f"eval {ecfg.split}", disable=not (show_progress and procs.is_main))
        with progress:
            for batch, mine in procs.rounds(list(range(done, len(chunks)))):
                mine_records, errors_before = [], roll.verify_errors
                if mine is not None:
                    c = chunks[mine]
                    # the chunk's offset in the example list seeds it: the same on any rank, in any run
                    mine_records = _eval_chunk(roll, ecfg, examples[c.start : c.stop], derive_seed(seed, seed_tag, c.start), progress)
                parts = procs.gather((mine_records, roll.verify_errors - errors_before))  # rank order = chunk order
                new = [r for part, _ in parts for r in part]
                records += new
                errors += sum(e for _, e in parts)
                done += len(batch)
                if log is not None:
                    log.append(new, done, len(records), errors)
                progress.update(sum(len(chunks[k]) for k in batch))
    results = (_results(task.name, model_name, len(examples), ecfg, roll.cfg.rounds, records, errors, task.summarize)
               if procs.is_main else None)
    if log is not None:
        write_json(Path(output_dir) / "results.json", results)
        log.finish(done, len(records), errors)
    return procs.broadcast(results)


def _results(task: str, model: str, n_examples: int, ecfg: EvalConfig, rounds: int,
             records: list[dict[str, Any]], verifier_errors: int, summarize: Any) -> dict[str, Any]:
    n = len(records)
    results: dict[str, Any] = {"task": task, "model": model, "n": n_examples, "samples": ecfg.samples_per_example,
                               "trials": n}
    ok1 = sum(r["attempt_ok"] for r in records)
    results.update(_acc("acc@1", ok1, n))
    results.update(_acc("acc@2", sum(r["attempt_ok"] or r["retry_ok"] for r in records), n))
    if ecfg.no_reflection_control:
        results.update(_acc("acc@2_no_reflection", sum(r["attempt_ok"] or r["no_reflection_retry_ok"] for r in records), n))
    for k in range(2, rounds + 1):
        hits = sum(r["attempt_ok"] or any(x["retry_ok"] for x in r.get("rounds", [])[:k]) for r in records)
        results.update(_acc(f"acc@{k + 1}", hits, n))
    n_fail = n - ok1
    results["verifier_errors"] = verifier_errors
    results["retry_fix_rate"] = sum(r["retry_ok"] for r in records if not r["attempt_ok"]) / n_fail if n_fail else 0.0
    if any("group" in r for r in records):
        results["by_group"] = summarize(records)
    results.update(trial_statistics(records, rounds=rounds, control=ecfg.no_reflection_control))
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
