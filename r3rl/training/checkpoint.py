"""Checkpoints that a kill never breaks, and resume.

A checkpoint is accelerate's `save_state` (model, optimizer, every rank's RNG
states) plus `trainer_state.json` (step, the data position follows from it; the
scheduler's state; each file's size and CRC32), written into a hidden temporary
folder and renamed into place when complete. Only folders holding
trainer_state.json count, so a half-written one is ignored; loading checks every
file against its CRC first and names a damaged one.
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
    try:
        accelerator.save_state(str(tmp))
    except Exception as e:  # torch's zip writer reports a full disk as RuntimeError; name the folder instead
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{final}: writing the checkpoint failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      "check free space and write permission") from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # sizes and CRCs: safetensors has no checksum, so a garbled tensor would otherwise load as garbage
        state = {**state, "files": {f.name: _fingerprint(f) for f in sorted(tmp.iterdir()) if f.is_file()}}
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=2))
        if final.exists():  # saving a step again (a resumed run that had finished): never half-delete it in place
            _discard(final)
        os.replace(tmp, final)  # the moment the checkpoint becomes visible
        atomic_write_text(root / "latest", final.name + "\n")
        for old in checkpoint_dirs(run_dir)[: -keep or None] if keep > 0 else []:
            _discard(old)
    accelerator.wait_for_everyone()
    return final


def _fingerprint(path: Path, size_only: bool = False) -> dict[str, int]:
    import zlib

    out = {"bytes": path.stat().st_size}
    if not size_only:
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        out["crc32"] = crc
    return out


def _discard(folder: Path) -> None:
    """Rename out of sight, then delete: a kill half-way through never leaves a half-deleted
    folder under a name that counts as a checkpoint."""
    gone = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


def check_files(path: Path) -> dict[str, Any]:
    """Read trainer_state.json and check every state file is whole, naming the first that is not."""
    from r3rl.checks.files import check_safetensors, check_torch_zip

    state_file = path / "trainer_state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{path} is not a complete r3rl checkpoint (no trainer_state.json)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        int(state["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{state_file}: not a valid trainer state ({type(e).__name__}: {e})") from None
    for name, want in (state.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{f}: missing from the checkpoint")
        got = _fingerprint(f, size_only=True)
        if got["bytes"] != want["bytes"]:
            raise ValueError(f"{f}: damaged ({got['bytes']} bytes, {want['bytes']} when saved)")
        if _fingerprint(f)["crc32"] != want["crc32"]:
            raise ValueError(f"{f}: damaged (its checksum differs from when it was saved)")
    if not list(path.glob("*.safetensors")) and not list(path.glob("*.bin")):
        raise ValueError(f"{path}: the checkpoint holds no model weights")
    for f in sorted(path.glob("*.safetensors")):
        check_safetensors(f)
    for f in sorted([*path.glob("*.bin"), *path.glob("*.pkl")]):
        check_torch_zip(f)
    return state


def load_checkpoint(accelerator, path: str | Path) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; returns trainer_state.json. Nothing is unpickled:
    accelerate loads its .bin/.pkl files with torch.load(weights_only=True)."""
    path = Path(path)
    state = check_files(path)
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # a file that passed the checks but does not fit this model / optimizer
        raise ValueError(f"{path}: cannot restore this checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    return state
