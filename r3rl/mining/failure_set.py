"""Failure-set construction by rejection sampling (the paper: up to 64 first attempts per query).

For each example, sample k first attempts; an example with at least one failure is kept with
its failed attempt(s) (`r3rl.environment.rollout.failed_attempts`) and its pass rate; examples that never
failed are listed in a sidecar `<output>.passed` file. The work runs in fixed chunks through the
chunk runner (r3rl/runtime/chunks.py): each chunk is seeded by its first example id and shared over all
processes, and `<output>.state.json` says which chunks are final, so 1 or N processes, or a run
resumed after a kill, write the same records, none lost or duplicated.

A failure set is a model's own failures: the state also records what mined it (the model's
name, revision and weights fingerprint, see r3rl/engine/provenance.py; the task and its options; the
mining and attempt-sampling settings; the seed; the examples). It is resumed, or trained on,
only by the same setup; otherwise mining stops with a sentence that says how to re-mine, or to
set `failures.reuse=any` to use the set as it is on purpose.

Record format (one JSON object per line):
    {"example_id": str, "attempts": k, "pass_rate": float, "example": {...},
     "failed_attempts": [str, ...], "reasons": [str, ...], "classes": [str, ...]}
"classes" (the verifier's failure class of each failed attempt) is written only when the task
classifies; a record of an example that never failed (in `.passed`) stops after "pass_rate".
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r3rl.config import FailuresConfig
from r3rl.engine.provenance import model_identity, same_model
from r3rl.environment.rollout import Failure, Rollout, derive_seed, failed_attempts
from r3rl.errors import InputError
from r3rl.runtime.chunks import ChunkLog, ChunkOutput, ChunkStateError, run_chunks, state_path
from r3rl.runtime.distributed import chunk_ranges, processes
from r3rl.runtime.io import iter_jsonl
from r3rl.runtime.progress import GenerationProgress

if TYPE_CHECKING:
    from r3rl.tasks.base import Task

REQUIRED = ("example_id", "example", "failed_attempts")
FAILED, PASSED = "failed", "passed"  # the two outputs of the chunk runner
_SETTINGS = ("split", "num_examples", "attempts_per_example", "max_per_example", "chunk_size")
_SAMPLING = ("max_attempt_tokens", "attempt_temperature", "top_p", "top_k")


class FailureSetMismatch(InputError):
    """The failure set at failures.path was mined by another setup (or says nothing about it)."""


def passed_path(output: str | Path) -> Path:
    return Path(str(output) + ".passed")


def _mine_chunk(roll: Rollout, fcfg: FailuresConfig, examples: list, ids: list[str], chunk: range,
                base_seed: int) -> ChunkOutput:
    """Records of one chunk: examples with a failed attempt go to FAILED, the others to PASSED."""
    # The seed depends on the chunk's first example id, never on the rank or on what was mined
    # before, so 1 or N processes, and a resumed run, sample alike.
    seed = derive_seed(base_seed, "mine", ids[chunk.start])
    part = [examples[i] for i in chunk]
    out: dict[str, list[dict[str, Any]]] = {FAILED: [], PASSED: []}
    for i, ex, row in zip(chunk, part, roll.attempts(part, n=fcfg.attempts_per_example, seed=seed)):
        fails = failed_attempts(row, fcfg.max_per_example)
        ok = sum(a.verdict.ok for a in row)
        rec: dict[str, Any] = {"example_id": ids[i], "attempts": len(row), "pass_rate": ok / len(row)}
        if fails:
            rec.update(example=ex, failed_attempts=[a.text for a in fails], reasons=[a.verdict.reason for a in fails])
            if any(a.verdict.failure_class for a in fails):  # absent for a task that does not classify
                rec["classes"] = [a.verdict.failure_class for a in fails]
        out[FAILED if fails else PASSED].append(rec)
    return ChunkOutput(out)


def mined_by(roll: Rollout, fcfg: FailuresConfig, seed: int, ids: list[str], chunk_size: int,
             model: Any = None, task_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a failure set is made of and by: the fingerprint its state records and reuse compares."""
    gen = roll.gen
    settings = {k: getattr(fcfg, k) for k in _SETTINGS}
    settings["chunk_size"] = chunk_size
    return {
        "model": model_identity(model, roll.engine),
        "task": {"name": roll.task.name, "options": task_options},
        "failures": settings,
        "generation": {k: getattr(gen, k) for k in _SAMPLING},
        "seed": seed,
        "examples": hashlib.sha1("\n".join(ids).encode()).hexdigest(),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words ("failures.attempts_per_example 8 then, 4 now")."""
    diffs = []
    om, nm = old.get("model") or {}, new["model"]
    if not same_model(om, nm):
        same_name = om.get("name_or_path") == nm.get("name_or_path")
        diffs.append(f"model {om.get('name_or_path')!r} then, {nm.get('name_or_path')!r} now"
                     + (" (other weights)" if same_name else ""))
    ot, nt = old.get("task") or {}, new["task"]
    if ot.get("name") != nt["name"]:
        diffs.append(f"task.name {ot.get('name')!r} then, {nt['name']!r} now")
    elif ot.get("options") is not None and nt["options"] is not None and ot["options"] != nt["options"]:
        diffs.append(f"task.options {ot['options']!r} then, {nt['options']!r} now")
    for section in ("failures", "generation"):
        for key, value in new[section].items():
            if (old.get(section) or {}).get(key) != value:
                diffs.append(f"{section}.{key} {(old.get(section) or {}).get(key)!r} then, {value!r} now")
    if old.get("seed") != new["seed"]:
        diffs.append(f"seed {old.get('seed')!r} then, {new['seed']!r} now")
    if not diffs and old.get("examples") != new["examples"]:
        diffs.append(f"the task's {new['failures']['split']!r} examples (its data changed)")
    return diffs


def _how_to_go_on(output: Path) -> str:
    return (f"to mine anew, set failures.path to a new file or delete {output}; to use it as it is on purpose, "
            "set failures.reuse=any")


def _decide(log: ChunkLog, fcfg: FailuresConfig, output: Path) -> tuple[str, Any]:
    """("resume", chunks done) / ("as_is", note) / ("error", sentence): what to do with what is at `output`."""
    if not output.exists() or not log.has_records():  # nothing mined yet (or deleted to mine anew): nothing to keep
        return "resume", log.start()
    state = log.load()
    if state is None:
        if fcfg.reuse == "any":
            return "as_is", f"failures.reuse=any: using {output} as it is (it does not say what mined it)"
        return "error", (f"{output} does not say what mined it (it was written by an r3rl older than "
                         f"{state_path(output).name}, or by hand), so it may be another model's failures; "
                         + _how_to_go_on(output))
    diffs = _differences(state["fingerprint"], log.fingerprint)
    if not diffs:
        return "resume", log.resume(state)
    if fcfg.reuse == "any":
        log.adopt(state)
        return "as_is", f"failures.reuse=any: using {output} as it is, although it was mined with {'; '.join(diffs)}"
    return "error", f"{output} was mined by another setup ({'; '.join(diffs)}): " + _how_to_go_on(output)


def mine(
    roll: Rollout,
    fcfg: FailuresConfig,
    seed: int,
    output: str | Path | None = None,
    show_progress: bool = True,
    chunk_size: int | None = None,
    accelerator: Any = None,
    *,
    model: Any = None,
    task_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mine failures of `fcfg.split` into `output` (default `fcfg.path`, JSONL); returns a summary.

    Every process calls it (under `accelerate launch`: pass the Accelerator, or let
    torch.distributed tell the rank); see r3rl/runtime/chunks.py for how chunks are shared, written and
    resumed. `model` is the model config section the rollout's model was loaded from, and
    `task_options` the task's options: both are recorded as what mined the set (by default the
    model is read from `roll.engine`, and the options are not compared). An existing set mined by
    another setup raises FailureSetMismatch unless `fcfg.reuse` is "any".
    """
    procs = processes(accelerator)
    task = roll.task
    output = Path(output or fcfg.path)
    chunk_size = chunk_size or fcfg.chunk_size
    examples = task.load_examples(fcfg.split, fcfg.num_examples, seed=seed)
    ids = [task.example_id(ex) for ex in examples]
    chunks = chunk_ranges(len(examples), chunk_size)
    log = None
    decision: tuple[str, Any] = ("resume", 0)
    if procs.is_main:
        log = ChunkLog({FAILED: output, PASSED: passed_path(output)},
                       mined_by(roll, fcfg, seed, ids, chunk_size, model, task_options))
        try:
            decision = _decide(log, fcfg, output)
        except ChunkStateError as e:  # told to every rank below, or the others would wait forever
            decision = ("damaged", str(e))
    kind, value = procs.broadcast(decision)  # every rank stops, or goes on, together
    if kind == "error":
        raise FailureSetMismatch(value)
    if kind == "damaged":
        raise ChunkStateError(value)
    if kind == "as_is":
        if procs.is_main and show_progress:
            print(f"r3rl: {value}", file=sys.stderr, flush=True)
        done, log = len(chunks), None
    else:
        done = value
    skipped = sum(map(len, chunks[:done]))
    counts = {"failed": 0, "passed": 0, "attempts": 0, "ok": 0}
    if done == len(chunks) and procs.is_main and show_progress:
        # nothing to generate: a bar at 100% reading "0 tokens, 0 tok/s" would look like a stalled engine
        print(f"r3rl: {output} is complete ({len(examples)} examples mined); nothing left to mine", file=sys.stderr,
              flush=True)
    progress = GenerationProgress(roll.engine, total=len(examples), initial=skipped, desc=f"mine {fcfg.split}",
                                  disable=not (show_progress and procs.is_main) or done == len(chunks))

    def on_round(batch: list[range], parts: list[ChunkOutput]) -> None:
        for part in parts:
            counts["failed"] += len(part.records[FAILED])
            counts["passed"] += len(part.records[PASSED])
            for rec in part.records[FAILED] + part.records[PASSED]:
                counts["attempts"] += rec["attempts"]
                counts["ok"] += round(rec["pass_rate"] * rec["attempts"])
        progress.update(sum(map(len, batch)), failed=counts["failed"], passed=counts["passed"])

    def work(c: range) -> ChunkOutput:
        progress.chunk(len(c), stages=1)
        n = len(c) * fcfg.attempts_per_example
        progress.stage("attempts", generations=n, tokens=n * roll.gen.max_attempt_tokens)
        return _mine_chunk(roll, fcfg, examples, ids, c, seed)

    with progress:
        run_chunks(procs, chunks, work, done=done, log=log, on_round=on_round)
    if log is not None:
        log.finish()
    summary = {
        "output": str(output),
        "split": fcfg.split,
        "examples": len(examples),
        "processes": procs.world,
        "skipped_already_mined": skipped,
        "new_with_failure": counts["failed"],
        "new_all_passed": counts["passed"],
        "failure_set_size": sum(1 for _ in iter_jsonl(output)) if procs.is_main else None,
        "attempt_pass_rate": counts["ok"] / counts["attempts"] if counts["attempts"] else None,
    }
    # the main process counted the file; the broadcast also keeps other ranks from reading it early
    return procs.broadcast(summary)


def load_failures(path: str | Path, max_per_example: int | None = None, task: Task | None = None) -> list[Failure]:
    """Read a failure set; each stored failed attempt becomes one Failure. Errors name file and line.
    With `task`, each record's example must be one the task can prompt and verify (not garbage).
    Any failure set reads, also one written before states and classes existed (reuse is mine()'s check)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"failure set not found: {path} (run `r3rl mine` first)")
    failures: list[Failure] = []
    for n, rec in enumerate(iter_jsonl(path), 1):
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise InputError(f"{path}, record {n}: missing field(s) {', '.join(missing)}")
        if not isinstance(rec["failed_attempts"], list) or not rec["failed_attempts"]:
            raise InputError(f"{path}, record {n}: 'failed_attempts' must be a non-empty list")
        if not isinstance(rec["example"], dict):
            raise InputError(f"{path}, record {n}: 'example' must be an object, got {type(rec['example']).__name__}")
        if task is not None:
            try:
                task.prompt(rec["example"])
                task.verify(rec["example"], str(rec["failed_attempts"][0]))
            except Exception as e:  # the task cannot read this example: training on it would be garbage
                raise InputError(f"{path}, record {n}: 'example' is not a valid {task.name} example "
                                 f"({type(e).__name__}: {e})") from None
        n_failed = len(rec["failed_attempts"])
        reasons = rec.get("reasons") or [""] * n_failed
        classes = rec.get("classes") or [""] * n_failed  # absent: the task did not classify (or an older set)
        for text, reason, cls in list(zip(rec["failed_attempts"], reasons, classes))[:max_per_example]:
            failures.append(Failure(rec["example"], str(text), str(reason), str(rec["example_id"]), str(cls)))
    if not failures:
        raise InputError(f"{path}: the failure set is empty (the model passed every attempt)")
    return failures
