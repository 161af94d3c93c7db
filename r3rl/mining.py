"""Failure-set construction by rejection sampling (the paper: up to 64 first attempts per query).

For each example, sample k first attempts; an example with at least one failure is
kept with its failed attempt(s) and its pass rate. Records are appended as they are
made, so an interrupted run keeps its work; examples that never failed are listed in
a sidecar `<output>.passed` file. On restart, every example found in either file is
skipped: resuming never duplicates or loses an example.

Record format (one JSON object per line):
    {"example_id": str, "example": {...}, "failed_attempts": [str, ...], "reasons": [str, ...],
     "attempts": k, "pass_rate": float}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r3rl.config import FailuresConfig
from r3rl.io import JsonlWriter, iter_jsonl, truncate_partial_tail
from r3rl.progress import progress_bar
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


def mine(
    roll: Rollout,
    fcfg: FailuresConfig,
    seed: int,
    output: str | Path | None = None,
    show_progress: bool = True,
    chunk_size: int = 64,
) -> dict[str, Any]:
    """Mine failures of `fcfg.split` into `output` (default `fcfg.path`, JSONL); returns a summary."""
    task = roll.task
    output = Path(output or fcfg.path)
    output.parent.mkdir(parents=True, exist_ok=True)
    examples = task.load_examples(fcfg.split, fcfg.num_examples, seed=seed)
    seen = _seen_ids(output)
    todo = [ex for ex in examples if task.example_id(ex) not in seen]
    k = fcfg.attempts_per_example
    base_seed = seed
    new_failed = new_passed = attempts_total = attempts_ok = 0
    bar = progress_bar(total=len(examples), initial=len(examples) - len(todo), desc="mine", disable=not show_progress)
    with JsonlWriter(output) as fail_w, JsonlWriter(passed_path(output)) as pass_w:
        for c in range(0, len(examples), chunk_size):
            chunk = examples[c : c + chunk_size]
            if all(task.example_id(ex) in seen for ex in chunk):
                continue
            # Chunks are cut from the full example list and a chunk interrupted half-way is sampled
            # again whole (its done rows are then skipped): one generation call samples a chunk, so
            # only the same chunk with the same seed gives a resumed run the uninterrupted run's attempts.
            seed = derive_seed(base_seed, "mine", task.example_id(chunk[0]))
            for ex, row in zip(chunk, roll.attempts(chunk, n=k, seed=seed)):
                if task.example_id(ex) in seen:
                    continue
                fails = [a for a in row if not a.verdict.ok]
                ok = len(row) - len(fails)
                attempts_total += len(row)
                attempts_ok += ok
                rec = {"example_id": task.example_id(ex), "attempts": len(row), "pass_rate": ok / len(row)}
                if fails:
                    fails = fails[: fcfg.max_per_example]
                    rec.update(example=ex, failed_attempts=[a.text for a in fails], reasons=[a.verdict.reason for a in fails])
                    fail_w.write(rec)
                    new_failed += 1
                else:
                    pass_w.write(rec)
                    new_passed += 1
            bar.update(sum(task.example_id(ex) not in seen for ex in chunk))
            bar.set_postfix(failed=new_failed, passed=new_passed)
    bar.close()
    total_failed = sum(1 for _ in iter_jsonl(output))
    return {
        "output": str(output),
        "examples": len(examples),
        "skipped_already_mined": len(examples) - len(todo),
        "new_with_failure": new_failed,
        "new_all_passed": new_passed,
        "failure_set_size": total_failed,
        "attempt_pass_rate": attempts_ok / attempts_total if attempts_total else None,
    }


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
            raise ValueError(f"{path}, record {n}: missing field(s) {', '.join(missing)}")
        if not isinstance(rec["failed_attempts"], list) or not rec["failed_attempts"]:
            raise ValueError(f"{path}, record {n}: 'failed_attempts' must be a non-empty list")
        if not isinstance(rec["example"], dict):
            raise ValueError(f"{path}, record {n}: 'example' must be an object, got {type(rec['example']).__name__}")
        if task is not None:
            try:
                task.prompt(rec["example"])
                task.verify(rec["example"], str(rec["failed_attempts"][0]))
            except Exception as e:  # the task cannot read this example: training on it would be garbage
                raise ValueError(f"{path}, record {n}: 'example' is not a valid {task.name} example "
                                 f"({type(e).__name__}: {e})") from None
        reasons = rec.get("reasons") or [""] * len(rec["failed_attempts"])
        for text, reason in list(zip(rec["failed_attempts"], reasons))[:max_per_example]:
            failures.append(Failure(rec["example"], str(text), str(reason), str(rec["example_id"])))
    if not failures:
        raise ValueError(f"{path}: the failure set is empty (the model passed every attempt)")
    return failures
