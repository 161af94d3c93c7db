"""Failure-set construction by rejection sampling (the paper: up to 64 first attempts per query).

For each example, sample k first attempts; an example with at least one failure is
kept with its failed attempt(s) and its pass rate. Records are appended as they are
made, so an interrupted run keeps its work; examples that never failed are listed in
a sidecar `<output>.passed` file. On restart, every example found in either file is
skipped: resuming never duplicates or loses an example. The work is cut into fixed chunks of
examples, each seeded by its first example id, and shared over all processes (see
r3rl/distributed.py): 1 or N processes, or a resumed run, write the same records.

Record format (one JSON object per line):
    {"example_id": str, "example": {...}, "failed_attempts": [str, ...], "reasons": [str, ...],
     "attempts": k, "pass_rate": float}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r3rl.config import FailuresConfig
from r3rl.distributed import chunk_ranges, processes
from r3rl.errors import InputError
from r3rl.io import JsonlWriter, iter_jsonl, truncate_partial_tail
from r3rl.progress import GenerationProgress
from r3rl.rollout import Failure, Rollout, derive_seed

REQUIRED = ("example_id", "example", "failed_attempts")


def passed_path(output: str | Path) -> Path:
    return Path(str(output) + ".passed")


def _seen_ids(output: Path) -> set[str]:
    seen: set[str] = set()
    for path in (output, passed_path(output)):
        if path.exists():
            truncate_partial_tail(path)
            seen.update(r["example_id"] for r in iter_jsonl(path))
    return seen


def _mine_chunk(roll: Rollout, fcfg: FailuresConfig, examples: list, ids: list[str], chunk: range,
                base_seed: int) -> list[dict[str, Any]]:
    """Records of one chunk (failed and all-passed examples alike; "failed_attempts" marks the first)."""
    # The seed depends on the chunk's first example id, never on the rank or on what was mined
    # before, so 1 or N processes, and a resumed run, sample alike.
    seed = derive_seed(base_seed, "mine", ids[chunk.start])
    part = [examples[i] for i in chunk]
    records = []
    for i, ex, row in zip(chunk, part, roll.attempts(part, n=fcfg.attempts_per_example, seed=seed)):
        fails = [a for a in row if not a.verdict.ok][: fcfg.max_per_example]
        ok = sum(a.verdict.ok for a in row)
        rec: dict[str, Any] = {"example_id": ids[i], "attempts": len(row), "pass_rate": ok / len(row)}
        if fails:
            rec.update(example=ex, failed_attempts=[a.text for a in fails], reasons=[a.verdict.reason for a in fails])
        records.append(rec)
    return records


def mine(
    roll: Rollout,
    fcfg: FailuresConfig,
    seed: int,
    output: str | Path | None = None,
    show_progress: bool = True,
    chunk_size: int | None = None,
    accelerator: Any = None,
) -> dict[str, Any]:
    """Mine failures of `fcfg.split` into `output` (default `fcfg.path`, JSONL); returns a summary.

    Every process calls it (under `accelerate launch`: pass the Accelerator, or let
    torch.distributed tell the rank): chunk k of the unfinished chunks goes to rank
    k % world, the main process writes the records of each round of chunks in chunk
    order, and every rank returns the same summary. A chunk interrupted half-written is
    sampled again whole (same seed) and only its missing records are written.
    """
    procs = processes(accelerator)
    task = roll.task
    output = Path(output or fcfg.path)
    examples = task.load_examples(fcfg.split, fcfg.num_examples, seed=seed)
    ids = [task.example_id(ex) for ex in examples]
    if procs.is_main:
        output.parent.mkdir(parents=True, exist_ok=True)
    seen = procs.broadcast(_seen_ids(output) if procs.is_main else None)
    todo = [c for c in chunk_ranges(len(examples), chunk_size or fcfg.chunk_size) if any(ids[i] not in seen for i in c)]
    skipped = sum(i in seen for i in ids)
    new_failed = new_passed = attempts_total = attempts_ok = 0
    progress = GenerationProgress(roll.engine, total=len(examples), initial=len(examples) - sum(map(len, todo)),
                                  desc=f"mine {fcfg.split}", disable=not (show_progress and procs.is_main))
    fail_w = JsonlWriter(output) if procs.is_main else None
    pass_w = JsonlWriter(passed_path(output)) if procs.is_main else None
    try:
        with progress:
            progress.stage("attempts")
            for batch, mine_chunk in procs.rounds(todo):
                mine_records = _mine_chunk(roll, fcfg, examples, ids, mine_chunk, seed) if mine_chunk is not None else []
                for records in procs.gather(mine_records):  # rank order = chunk order of this round
                    for rec in records:
                        if rec["example_id"] in seen:  # written before an interruption
                            continue
                        attempts_total += rec["attempts"]
                        attempts_ok += round(rec["pass_rate"] * rec["attempts"])
                        failed = "failed_attempts" in rec
                        new_failed += failed
                        new_passed += not failed
                        if procs.is_main:
                            (fail_w if failed else pass_w).write(rec)
                progress.update(sum(map(len, batch)), failed=new_failed, passed=new_passed)
    finally:
        for w in (fail_w, pass_w):
            if w is not None:
                w.close()
    summary = {
        "output": str(output),
        "split": fcfg.split,
        "examples": len(examples),
        "processes": procs.world,
        "skipped_already_mined": skipped,
        "new_with_failure": new_failed,
        "new_all_passed": new_passed,
        "failure_set_size": sum(1 for _ in iter_jsonl(output)) if procs.is_main else None,
        "attempt_pass_rate": attempts_ok / attempts_total if attempts_total else None,
    }
    # the main process counted the file; the broadcast also keeps other ranks from reading it early
    return procs.broadcast(summary)


def load_failures(path: str | Path, max_per_example: int | None = None, task: Task | None = None) -> list[Failure]:
    """Read a failure set; each stored failed attempt becomes one Failure. Errors name file and line.
    With `task`, each record's example must be one the task can prompt and verify (not garbage)."""
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
        reasons = rec.get("reasons") or [""] * len(rec["failed_attempts"])
        for text, reason in list(zip(rec["failed_attempts"], reasons))[:max_per_example]:
            failures.append(Failure(rec["example"], str(text), str(reason), str(rec["example_id"])))
    if not failures:
        raise InputError(f"{path}: the failure set is empty (the model passed every attempt)")
    return failures
