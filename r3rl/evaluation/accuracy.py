"""First-try and second-try accuracy with confidence intervals, and the no-reflection control.

acc@1                 first attempt passes
acc@2                 first attempt passes, or the retry after a reflection passes
acc@2_no_reflection   first attempt passes, or a retry passes after only "try again" (the control:
                      how much of acc@2 is a second sample rather than the reflection)
With rollout.rounds = R > 1, acc@{R+1} counts success within R reflect/retry rounds.
Intervals are 95%: Wilson over trials with one sample per example, a bootstrap over examples with
several (`trial_statistics`); acc@2 vs the control is a paired test (exact McNemar), see stats.py.

Sampling: eval.temperature / top_p / max_*_tokens replace the generation section's settings
during evaluation (unset = the generation section's); they are passed into each rollout call
(`eval_generation`), so the rollout, which a trainer shares, is never changed. Work runs through
the chunk runner (r3rl/runtime/chunks.py) and is written as it is made, so an interrupted evaluation
resumes (see evaluate_model). Each trial is one TrialRecord (r3rl/evaluation/records.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterable

from r3rl.config import STAGES, EvalConfig, GenerationConfig, to_dict
from r3rl.engine.provenance import model_identity, same_model
from r3rl.environment.rollout import Rollout, derive_seed, failed_attempts
from r3rl.errors import InputError
from r3rl.evaluation import stats
from r3rl.evaluation.classes import per_class_table, transition_table
from r3rl.evaluation.diagnostics import record_diagnostics
from r3rl.evaluation.records import RoundRecord, TrialRecord, passed_predicates, read_trials
from r3rl.evaluation.result import Accuracy, EvalResult
from r3rl.evaluation.stats import wilson_interval
from r3rl.runtime.chunks import ChunkLog, ChunkOutput, ChunkStateError, run_chunks, state_path
from r3rl.runtime.distributed import chunk_ranges, processes
from r3rl.runtime.io import write_json
from r3rl.runtime.progress import GenerationProgress

EPISODES = "episodes"  # the chunk runner's one output: <output_dir>/episodes.jsonl


def eval_generation(gen: GenerationConfig, ecfg: EvalConfig) -> GenerationConfig:
    """The generation settings of an evaluation: eval.temperature / top_p / max_*_tokens in place of
    the generation section's where set (a copy: the section itself is left as it is)."""
    return gen.with_stages(temperature=ecfg.temperature, top_p=ecfg.top_p,
                           max_tokens={stage: getattr(ecfg, f"max_{stage}_tokens") for stage in STAGES})


def _eval_chunk(roll: Rollout, ecfg: EvalConfig, sampling: GenerationConfig, chunk: list, seed: int,
                progress: GenerationProgress) -> list[TrialRecord]:
    """The trials of one chunk of examples: samples_per_example trials per example, in order."""
    task = roll.task
    progress.chunk(len(chunk), stages=3 if ecfg.no_reflection_control else 2)
    n = len(chunk) * ecfg.samples_per_example
    progress.stage("attempt", generations=n, tokens=n * sampling.max_attempt_tokens)
    attempts = roll.attempts(chunk, n=ecfg.samples_per_example, seed=seed, sampling=sampling)
    ids = [task.example_id(ex) for ex in chunk]
    failed = []  # (example index, sample index, attempt): every failed sample is a trial of its own
    for i, row in enumerate(attempts):
        fails = {id(a) for a in failed_attempts(row)}
        failed += [(i, j, a) for j, a in enumerate(row) if id(a) in fails]
    failures = [a.as_failure(ids[i]) for i, _, a in failed]
    by_trial: dict[tuple[int, int], list] = {}
    controls = {}
    if failures:
        k, rounds = roll.cfg.retries_per_reflection, roll.cfg.rounds  # per failure: a reflection and its retries, each round
        progress.stage("reflection + retry", generations=len(failures) * (2 * rounds if k == 1 else 1 + k),
                       tokens=len(failures) * (rounds * (sampling.max_reflection_tokens + sampling.max_retry_tokens)
                                               if k == 1 else sampling.max_reflection_tokens + k * sampling.max_retry_tokens))
        for e in roll.reflect_and_retry(failures, group_size=1, seed=seed, sampling=sampling):
            i, j, _ = failed[e.failure_index]
            by_trial.setdefault((i, j), []).append(e)
        if ecfg.no_reflection_control:
            progress.stage("control", generations=len(failures), tokens=len(failures) * sampling.max_retry_tokens)
            for (i, j, _), g in zip(failed, roll.retry_without_reflection(failures, seed=seed, sampling=sampling)):
                controls[(i, j)] = (g.text, roll.verify(chunk[i], g.text))
    records = []
    for i, row in enumerate(attempts):
        for j, a in enumerate(row):
            eps = sorted(by_trial.get((i, j), []), key=lambda e: e.round)
            ctrl = controls.get((i, j))
            first = eps[0] if eps else None
            records.append(TrialRecord(
                example_id=ids[i],
                sample=j,
                prompt=task.prompt(a.example),
                attempt_text=a.text,
                attempt_ok=a.verdict.ok,
                attempt_reason=a.verdict.reason,
                reflection_text=first.reflection_text if first else "",
                retry_text=first.retry_text if first else "",
                retry_ok=bool(first and first.retry_ok),
                retry_reason=first.retry_reason if first else "",
                no_reflection_retry_text=ctrl[0] if ctrl else "",
                no_reflection_retry_ok=bool(ctrl and ctrl[1].ok),
                attempt_class=a.verdict.failure_class if not a.verdict.ok else "",
                retry_class=(first.retry_class or "") if first and not first.retry_ok else "",
                no_reflection_retry_class=ctrl[1].failure_class if ctrl and not ctrl[1].ok else "",
                group=task.breakdown(a.example),  # per-group results (BFCL categories); see Task.summarize
                rounds=(tuple(RoundRecord(e.reflection_text, e.retry_text, e.retry_ok) for e in eps)
                        if roll.cfg.rounds > 1 else None),
            ))
    return records


def _open_log(out: Path, fingerprint: dict[str, Any],
              overwrite: bool = False) -> tuple[ChunkLog, int, list[TrialRecord], int, str]:
    """The episodes log in `out`: resumed when an unfinished evaluation with the same settings is there,
    else started over (always with `overwrite`; an evaluation of other weights there has stopped the run
    before this unless `overwrite`: `check_same_weights`).
    Returns (log, chunks done, their trials, their verifier errors, a note)."""
    (out / "eval_state.json").unlink(missing_ok=True)  # the state file of r3rl before the chunk runner
    log = ChunkLog({EPISODES: out / "episodes.jsonl"}, fingerprint)
    if overwrite:
        return log, log.start(), [], 0, ""
    try:
        state = log.load()
        if state and not state.get("complete") and state["fingerprint"] == fingerprint:
            done = log.resume(state)
            return (log, done, read_trials(log.outputs[EPISODES]), int(state.get("totals", {}).get("verifier_errors", 0)),
                    f"resuming: {done} chunk(s) already evaluated")
    except (ChunkStateError, ValueError):  # damaged: an evaluation is only derived data, so it is made again
        pass
    return log, log.start(), [], 0, ""


def check_same_weights(out: Path, model: str, weights: str) -> None:
    """Stop when `out` holds an evaluation (unfinished with chunks saved, or finished) of other weights
    than `model`'s (`weights`: its provenance fingerprint): resuming would mix two models in one
    results.json, starting over would lose the other model's results. `r3rl eval` checks before it
    loads the model. Files of earlier r3rl versions carry no weights fingerprint: their model names
    are compared (provenance.same_model)."""
    prior, what = None, ""
    try:
        state = json.loads(state_path(out / "episodes.jsonl").read_text(encoding="utf-8"))
        if not state.get("complete") and int(state.get("chunks_done", 0)) > 0:
            prior, what = state["fingerprint"], f"an unfinished evaluation ({state['chunks_done']} chunk(s) saved)"
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # no state, or a damaged one: its chunks would not be resumed anyway
    if prior is None:
        try:
            prior, what = json.loads((out / "results.json").read_text(encoding="utf-8")), "a finished evaluation"
        except (OSError, ValueError):
            return
    if not isinstance(prior, dict):
        return
    old = {"name_or_path": str(prior.get("model") or ""), "revision": "", "weights": str(prior.get("weights") or "")}
    new = {"name_or_path": str(model or ""), "revision": "", "weights": weights}
    if same_model(old, new):
        return
    whose = (f"of the weights {old['name_or_path']} held then (they have changed since)"
             if old["name_or_path"] == new["name_or_path"] else f"of {old['name_or_path'] or 'another model'}")
    raise InputError(f"{out} holds {what} {whose}, not of the weights of {new['name_or_path'] or 'this model'}: "
                     "choose another output folder (--output / eval.output_dir) or pass --overwrite to replace it")


def chunks_done(output_dir: str | Path) -> int:
    """How many chunks of an evaluation in `output_dir` are saved (0 when none), for the Ctrl-C message."""
    path = state_path(Path(output_dir) / "episodes.jsonl")
    try:
        return int(json.loads(path.read_text()).get("chunks_done", 0))
    except (OSError, ValueError, AttributeError):
        return 0


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
    identity: dict[str, str] | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Evaluate on the held-out split; writes results.json (EvalResult.to_json) and episodes.jsonl when
    output_dir is given.

    Every process calls it: chunk k of the examples is evaluated on rank k % world with a seed
    derived from (seed, seed_tag, chunk offset), the records are gathered in chunk order, the main
    process appends them to episodes.jsonl as each round of chunks ends, and every rank returns
    the same results. An interrupted run into the same output_dir resumes after its last finished
    chunk and ends with the same files as an uninterrupted one.

    `identity` (provenance.model_identity: name, revision, weights fingerprint) says which weights are
    evaluated (default: the engine's model); it goes into the resume state and results.json, so an
    evaluation of other weights in output_dir stops the run instead of being resumed or replaced,
    unless `overwrite`, which starts over.
    """
    procs = processes(accelerator)
    task = roll.task
    examples = task.load_examples(ecfg.split, num_examples or ecfg.num_examples, seed=seed)
    if not examples:
        raise InputError(f"task {task.name!r} returned no examples for split {ecfg.split!r}")
    chunk_size = chunk_size or ecfg.chunk_size
    chunks = chunk_ranges(len(examples), chunk_size)
    sampling = eval_generation(roll.gen, ecfg)
    log = None
    done, records, errors = 0, [], 0
    weights = ""
    if output_dir is not None:
        weights = (identity or model_identity(engine=roll.engine))["weights"]
        if not overwrite:  # on every rank (the same files, the same answer): none is left waiting for the others
            check_same_weights(Path(output_dir), model_name, weights)
    if output_dir is not None and procs.is_main:
        fingerprint = {
            "task": task.name, "model": model_name, "weights": weights, "seed": seed, "seed_tag": repr(seed_tag),
            "chunk_size": chunk_size,
            "examples": hashlib.sha1("\n".join(task.example_id(ex) for ex in examples).encode()).hexdigest(),
            "eval": {k: v for k, v in to_dict(ecfg).items() if k not in ("output_dir", "num_examples", "chunk_size")},
            "generation": to_dict(sampling), "rollout": to_dict(roll.cfg),
        }
        log, done, records, errors, note = _open_log(Path(output_dir), fingerprint, overwrite)
        if note and show_progress:
            print(f"eval: {note} in {output_dir}", file=sys.stderr, flush=True)
    done = procs.broadcast(done)
    progress = GenerationProgress(roll.engine, total=len(examples), initial=sum(map(len, chunks[:done])),
                                  desc=f"eval {ecfg.split}", disable=not (show_progress and procs.is_main))

    def work(c: range) -> ChunkOutput:
        errors_before = roll.verify_errors
        # the chunk's offset in the example list seeds it: the same on any rank, in any run
        trials = _eval_chunk(roll, ecfg, sampling, examples[c.start : c.stop], derive_seed(seed, seed_tag, c.start), progress)
        return ChunkOutput({EPISODES: [t.to_json() for t in trials]}, {"verifier_errors": roll.verify_errors - errors_before})

    def on_round(batch: list[range], parts: list[ChunkOutput]) -> None:
        nonlocal errors
        if procs.is_main:
            records.extend(TrialRecord.from_json(r) for part in parts for r in part.records[EPISODES])
        errors += sum(part.totals["verifier_errors"] for part in parts)
        progress.update(sum(map(len, batch)))

    with progress:
        done = run_chunks(procs, chunks, work, done=done, log=log, on_round=on_round)
    results = (_results(task.name, model_name, len(examples), ecfg, roll.cfg.rounds, records, errors, task.summarize,
                        weights) if procs.is_main else None)
    if log is not None:
        write_json(Path(output_dir) / "results.json", results.to_json())
        log.finish()
    return procs.broadcast(results)


def _results(task: str, model: str, n_examples: int, ecfg: EvalConfig, rounds: int,
             records: list[TrialRecord], verifier_errors: int, summarize: Any, weights: str = "") -> EvalResult:
    n = len(records)
    acc = {}
    for name, ok in passed_predicates(rounds, ecfg.no_reflection_control).items():
        hits = sum(ok(r) for r in records)
        acc[name] = Accuracy(hits / n if n else 0.0, list(wilson_interval(hits, n)), hits)
    n_fail = n - acc["acc@1"].hits
    trials = trial_statistics(records, rounds=rounds, control=ecfg.no_reflection_control)
    for name, a in acc.items():  # with several samples per example, the bootstrap's intervals replace Wilson's
        a.ci = trials.get(f"{name}_ci", a.ci)
    classes = class_statistics(records, control=ecfg.no_reflection_control)
    return EvalResult(
        task=task, model=model, n=n_examples, samples=ecfg.samples_per_example, trials=n,
        # provenance's fingerprint of the evaluated weights: readers check it still matches `model`
        weights=weights or None,
        acc=acc,
        verifier_errors=verifier_errors,
        retry_fix_rate=sum(r.retry_ok for r in records if not r.attempt_ok) / n_fail if n_fail else 0.0,
        by_group=summarize(records) if any(r.group is not None for r in records) else None,
        intervals=trials.get("intervals"),
        retry_fix_rate_ci=trials.get("retry_fix_rate_ci"),
        retry_fix_rate_interval=trials.get("retry_fix_rate_interval"),
        comparisons=trials.get("comparisons"),
        reflection_diagnostics=classes["reflection_diagnostics"],
        by_class=classes.get("by_class"),
        transitions=classes.get("transitions"),
    )


def class_statistics(records: Iterable[TrialRecord], *, control: bool = True) -> dict[str, Any]:
    """What the reflections fixed, class by class, and what they looked like (docs/failure-classes.md).

    by_class: per failure class of the failed first attempts, retry success with and without
    reflection and the paired gain (Holm-adjusted over the classes); transitions: class of the first
    attempt -> outcome of the retry (and of the control); both only when the task classifies its
    failures. reflection_diagnostics: length, diversity and repetition of the reflections.
    """
    rows = [r.to_json() for r in records]
    if not control:  # no control was run: its outcome is unknown, not a failure
        for r in rows:
            r["no_reflection_retry_ok"] = None
    out: dict[str, Any] = {"reflection_diagnostics": record_diagnostics(rows)}
    if any(not r["attempt_ok"] and r.get("attempt_class") for r in rows):
        out["by_class"] = per_class_table(rows)
        out["transitions"] = {"retry": transition_table(rows, "retry")}
        if control:
            out["transitions"]["no_reflection_retry"] = transition_table(rows, "no_reflection_retry")
    return out


def trial_statistics(records: Iterable[TrialRecord | dict[str, Any]], *, rounds: int = 1,
                     control: bool = True) -> dict[str, Any]:
    """Intervals that respect how trials are grouped, and the paired acc@2 vs control test.

    records are TrialRecords (or episodes.jsonl rows, read as TrialRecords). Samples of one
    example are correlated, so with several per example the acc@k intervals (replacing the
    Wilson ones) and the retry_fix_rate interval come from a bootstrap over examples. acc@2 and
    the control are scored on the same trials with the same seeds, so they are compared by a
    paired test (McNemar), reported with the paired difference.
    """
    records = [r if isinstance(r, TrialRecord) else TrialRecord.from_json(r) for r in records]
    if not records:
        return {}
    passed = passed_predicates(rounds, control)
    out: dict[str, Any] = {}
    for name, ok in passed.items():
        _, ci, method = stats.clustered_proportion((r.example_id, ok(r)) for r in records)
        out[f"{name}_ci"] = list(ci)
    out["intervals"] = method
    failed = [(r.example_id, r.retry_ok) for r in records if not r.attempt_ok]
    _, fix_ci, fix_method = stats.clustered_proportion(failed)
    out["retry_fix_rate_ci"] = list(fix_ci)
    out["retry_fix_rate_interval"] = fix_method
    if control:
        ctrl, refl = passed["acc@2_no_reflection"], passed["acc@2"]
        cmp = stats.paired_comparison((r.example_id, ctrl(r), refl(r)) for r in records)
        out["comparisons"] = {"acc@2_vs_no_reflection": cmp.to_json()}
    return out
