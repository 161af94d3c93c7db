"""Checks of files r3rl reads before a library reads them, so a damaged file is named in one sentence.

A truncated tokenizer.json or a half-written optimizer state otherwise fails dozens of frames deep
inside tokenizers, safetensors or torch with a message that names no file. Used by model loading
(r3rl.engine.loading) and checkpoint loading (r3rl.training.checkpoint); each check raises
DamagedFileError (a ValueError) naming the file. check_output does the same for the places r3rl will
write, before the work starts, naming the config field.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

from r3rl.errors import DamagedFileError, InputError

__all__ = ["check_json_file", "check_safetensors", "check_torch_zip", "check_model_folder", "relative_note",
           "check_output"]


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


def check_output(path: str | os.PathLike[str], field: str, is_file: bool = False) -> None:
    """Before the work starts: `path` (a folder, or with is_file a file) can be made and written.

    Otherwise the first write, maybe hours later, fails with an OS error naming a temporary file
    ("[Errno 2] ... '/proc/.fail.jsonl.l3821q7f.tmp'"). Raises InputError naming `field` and the path.
    Creates nothing: a probe file in the nearest existing folder is made and removed at once.
    """
    path = Path(path).expanduser()
    if is_file and path.is_dir():
        raise InputError(f"{field}: {path} is a folder, not a file")
    if not is_file and path.exists() and not path.is_dir():
        raise InputError(f"{field}: cannot write {path}: it is a file, not a folder")
    folder = path.parent if is_file else path
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists; the rest is made later
        if folder.is_symlink():  # a dangling link: writing through it fails the same way
            break
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{field}: cannot write {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".r3rl-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{field}: cannot write {path}: cannot create a file in {folder} "
                         f"({e.strerror or type(e).__name__})") from None
