"""Checkpoints that a kill never breaks, and resume.

A checkpoint is accelerate's `save_state` (model, optimizer, scheduler, every
rank's RNG states) plus `trainer_state.json` (step; the data position follows from
it), written into a hidden temporary folder and renamed into place when complete.
Only folders holding trainer_state.json count, so a half-written one is ignored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from r3rl.io import atomic_write_text

_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # the moment the checkpoint becomes visible
        atomic_write_text(root / "latest", final.name + "\n")
        for old in checkpoint_dirs(run_dir)[: -keep or None] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path) -> dict[str, Any]:
    path = Path(path)
    state_file = path / "trainer_state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{path} is not a complete r3rl checkpoint (no trainer_state.json)")
    accelerator.load_state(str(path))
    return json.loads(state_file.read_text())
