"""Fault injection into a real `r3rl` command: kill -9 at a chosen code point, or a failing disk.

Part of the reliability suite, not of the library (it wraps the command line, so nothing in r3rl/
may import it). Run from the repository root, or with it on PYTHONPATH (tests/reliability/harness.py).

    R3RL_FAULT=jsonl:3 python -m tests.reliability.faults mine --config F ...
    R3RL_FAULT=delay:4.5 python -m tests.reliability.faults train --config F ...
    R3RL_FAULT_COUNTS=counts.json python -m tests.reliability.faults train ...   (record how often each point runs)

The command runs exactly as `r3rl ...` would, with hooks wrapped around the places where work is
saved or lost. At the N-th call of the named point the process sends itself SIGKILL (no handler,
no flush, no atexit: what a preempted machine or the OOM killer does), in the middle of the action
where that makes sense:

    jsonl       JsonlWriter.write: half of the line is written and flushed, then kill
    replace     os.replace (atomic writes, checkpoint and final-model renames): kill just before
    replaced    os.replace: kill just after
    fsync       os.fsync (atomic writes): the temporary file is half written, kill
    torch_save  torch.save (optimizer, RNG, scheduler states): file written then cut in half, kill
    safetensors safetensors save_file (weights): file written then cut in half, kill
    rmtree      shutil.rmtree (checkpoint rotation and replacement): half of the files deleted, kill
    attempts    Rollout.attempts (first attempts: mining, online data, evaluation): kill on entry
    reflect     Rollout.reflect_and_retry (training and evaluation rollouts): kill on entry
    delay       a timer: kill after that many seconds (a float), wherever the process is

R3RL_FAULT=enospc:N instead makes the N-th write through r3rl.runtime.io / JsonlWriter / torch.save fail
with "No space left on device", to check that errors are clear and nothing half-written is trusted.
With R3RL_FAULT_COUNTS, the number of calls of each point (and the number of examples given to
Rollout.attempts, `attempts_examples`) is written there when the command ends normally.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

POINTS = ("jsonl", "replace", "replaced", "fsync", "torch_save", "safetensors", "rmtree", "attempts", "reflect")

_counts: Counter[str] = Counter()
_fault: tuple[str, float] | None = None


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _hit(point: str) -> bool:
    """Count a call of `point`; True when this is the call the fault is planned for."""
    _counts[point] += 1
    return _fault is not None and _fault[0] == point and _counts[point] == int(_fault[1])


def _cut_in_half(path: Any) -> None:
    try:
        p = Path(path)
        if p.is_file():
            os.truncate(p, p.stat().st_size // 2)
    except (TypeError, OSError):  # a file object rather than a path: leave it
        pass


def _enospc_hit() -> bool:
    _counts["write"] += 1
    return _fault is not None and _fault[0] == "enospc" and _counts["write"] >= int(_fault[1])


def _raise_enospc(path: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def install() -> None:
    """Wrap the fault points (before r3rl and accelerate bind the functions they call)."""
    import shutil

    import safetensors.torch
    import torch

    import r3rl.runtime.io as rio
    from r3rl.environment.rollout import Rollout

    orig_write = rio.JsonlWriter.write

    def jsonl_write(self, record):
        if _enospc_hit():
            _raise_enospc(self.path)
        if _hit("jsonl"):
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
            self._f.flush()
            with open(self.path, "ab") as f:
                f.write(line[: max(1, len(line) // 2)])
            _die()
        return orig_write(self, record)

    rio.JsonlWriter.write = jsonl_write

    orig_replace = os.replace

    def replace(src, dst, *a, **k):
        if _hit("replace"):
            _die()
        out = orig_replace(src, dst, *a, **k)
        _counts["replaced"] += 1
        if _fault == ("replaced", _counts["replaced"]):
            _die()
        return out

    os.replace = replace

    orig_fsync = os.fsync

    def fsync(fd):
        if _hit("fsync"):
            try:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            except OSError:
                pass
            _die()
        return orig_fsync(fd)

    os.fsync = fsync

    orig_atomic = rio.atomic_write_bytes

    def atomic_write_bytes(path, data):
        if _enospc_hit():
            _raise_enospc(path)
        return orig_atomic(path, data)

    rio.atomic_write_bytes = atomic_write_bytes

    orig_save = torch.save

    def torch_save(obj, f, *a, **k):
        if _enospc_hit():
            _raise_enospc(f)
        out = orig_save(obj, f, *a, **k)
        if _hit("torch_save"):
            _cut_in_half(f)
            _die()
        return out

    torch.save = torch_save

    orig_safe = safetensors.torch.save_file

    def save_file(tensors, filename, *a, **k):
        out = orig_safe(tensors, filename, *a, **k)
        if _hit("safetensors"):
            _cut_in_half(filename)
            _die()
        return out

    safetensors.torch.save_file = save_file

    orig_rmtree = shutil.rmtree

    def rmtree(path, *a, **k):
        if _hit("rmtree") and Path(path).is_dir():
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            for p in files[: len(files) // 2]:
                p.unlink()
            _die()
        return orig_rmtree(path, *a, **k)

    shutil.rmtree = rmtree

    orig_attempts = Rollout.attempts

    def attempts(self, examples, *a, **k):
        if _hit("attempts"):
            _die()
        _counts["attempts_examples"] += len(examples)
        return orig_attempts(self, examples, *a, **k)

    Rollout.attempts = attempts

    orig_reflect = Rollout.reflect_and_retry

    def reflect_and_retry(self, *a, **k):
        if _hit("reflect"):
            _die()
        return orig_reflect(self, *a, **k)

    Rollout.reflect_and_retry = reflect_and_retry


def _parse(spec: str) -> tuple[str, float] | None:
    if not spec:
        return None
    point, _, n = spec.partition(":")
    if point not in POINTS + ("delay", "enospc") or not n:
        raise SystemExit(f"R3RL_FAULT={spec!r}: expected POINT:N with POINT one of {', '.join(POINTS)}, delay, enospc")
    return point, float(n)


def main(argv: list[str] | None = None) -> int:
    global _fault
    _fault = _parse(os.environ.get("R3RL_FAULT", ""))
    if _fault and _fault[0] == "delay":
        timer = threading.Timer(_fault[1], _die)
        timer.daemon = True
        timer.start()
    install()
    counts_path = os.environ.get("R3RL_FAULT_COUNTS")
    from r3rl.cli import main as r3rl_main

    rc = r3rl_main(sys.argv[1:] if argv is None else argv)
    if counts_path:
        Path(counts_path).write_text(json.dumps(dict(_counts)))
    return rc


if __name__ == "__main__":
    sys.exit(main())
