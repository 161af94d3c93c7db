"""A full disk and a read-only output folder: a clear error naming the path (exit status 2, no
traceback), and nothing half-written left where a resume would trust it: the next run, with the
disk fixed, ends exactly as an uninterrupted run.

Simulated by failing the N-th write with ENOSPC (tests/reliability/faults.py); where this machine allows
mounts, also for real on a tiny tmpfs and a read-only one.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.reliability.conftest import LONG
from tests.reliability.harness import (MINE, TRAIN, check_latest_checkpoint, jsonl_rows, ok, r3rl, same_weights,
                                       weights, without_timing)

POINTS = 6 if LONG else 2


def _one_line_error(proc, needle: str) -> str:
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-1000:]
    return lines[0]


def test_full_disk_during_train_then_resume(tmp_path):
    ref, counts = tmp_path / "ref", tmp_path / "counts.json"
    ok(r3rl(["train", f"train.output_dir={ref}", f"failures.path={ref}/failures.jsonl", *TRAIN], tmp_path, counts=counts))
    writes = json.loads(counts.read_text())["write"]
    for n in random.Random(3).sample(range(1, writes + 1), POINTS):
        run = tmp_path / f"run{n}"
        msg = _one_line_error(r3rl(["train", f"train.output_dir={run}", f"failures.path={run}/failures.jsonl", *TRAIN], tmp_path, fault=f"enospc:{n}"),
                              "No space left on device")
        assert str(run) in msg
        check_latest_checkpoint(run)
        resume = ["--resume"]  # also right before the first checkpoint: it then starts from step 0
        ok(r3rl(["train", *resume, f"train.output_dir={run}", f"failures.path={run}/failures.jsonl", *TRAIN], tmp_path))
        for name in ("metrics.jsonl", "episodes.jsonl", "failures.jsonl"):
            assert without_timing(jsonl_rows(run / name, False)) == without_timing(jsonl_rows(ref / name, False)), name
        assert same_weights(weights(run / "final"), weights(ref / "final"))


def _mount(where: Path, size: str, readonly: bool = False) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode != 0:
        return False
    if readonly:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    return True


def test_real_full_disk_and_read_only_folder(tmp_path):
    small, ro = tmp_path / "small", tmp_path / "ro"
    if not _mount(small, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root with mount rights)")
    try:
        assert _mount(ro, "1m", readonly=True)
        try:
            proc = r3rl(["mine", f"failures.path={ro}/failures.jsonl", *MINE], tmp_path)
            msg = _one_line_error(proc, "Read-only file system")
            assert str(ro) in msg
        finally:
            subprocess.run(["umount", str(ro)])
        run = small / "run"
        proc = r3rl(["train", f"train.output_dir={run}", f"failures.path={run}/failures.jsonl", *TRAIN], tmp_path)
        msg = _one_line_error(proc, "checkpoint")  # 3 MB holds the logs, never a 10 MB checkpoint
        assert str(run) in msg
        assert check_latest_checkpoint(run) is None
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "temporary folder left"
    finally:
        subprocess.run(["umount", str(small)])
