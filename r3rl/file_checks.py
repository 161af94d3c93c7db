"""Checks of files r3rl reads before a library reads them, so a damaged file is named in one sentence.

A truncated tokenizer.json or a half-written optimizer state otherwise fails dozens of frames deep
inside tokenizers, safetensors or torch with a message that names no file. Used by model loading
(r3rl.engine.loading) and checkpoint loading (r3rl.training.checkpoint); each check raises
DamagedFileError (a ValueError) naming the file.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from r3rl.errors import DamagedFileError

__all__ = ["check_json_file", "check_safetensors", "check_torch_zip", "check_model_folder", "relative_note"]


def relative_note(path: str | os.PathLike[str], what: str = "a relative path") -> str:
    """' (a relative path, resolved from the current folder /x)' for a relative path, '' for an absolute
    one: run from another folder, 'no such data file: sums.jsonl' alone does not say where it looked."""
    if Path(path).expanduser().is_absolute():
        return ""
    return f" ({what}, resolved from the current folder {os.getcwd()})"


def check_json_file(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise DamagedFileError(f"{path}: damaged JSON file ({e})") from None


def check_safetensors(path: Path) -> None:
    """The header parses and agrees with the file's size (what truncation breaks)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as st:
            st.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise DamagedFileError(f"{path}: damaged weights file ({e})") from None


def check_torch_zip(path: Path) -> None:
    """torch.save files are zip archives with a CRC per entry: truncation and garbling both show."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DamagedFileError(f"{path}: damaged state file ({e})") from None
    if bad is not None:
        raise DamagedFileError(f"{path}: damaged state file (entry {bad} fails its checksum)")


def check_model_folder(folder: Path) -> None:
    """A local model, adapter or tokenizer folder: every JSON and safetensors file must be whole."""
    for f in sorted(folder.glob("*.json")):
        check_json_file(f)
    for f in sorted(folder.glob("*.safetensors")):
        check_safetensors(f)
