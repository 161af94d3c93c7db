"""Files r3rl writes and reads: atomic writes, JSONL that survives interruption, clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from r3rl.errors import InputError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class JsonlWriter:
    """Append-only JSONL, one flushed line per record, so an interrupted run keeps every finished line."""

    def __init__(self, path: str | Path, mode: str = "a"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, mode, encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def json_error_place(error: json.JSONDecodeError, line: str) -> str:
    """Where in one JSONL line decoding failed. json's own colno counts from the last newline it saw,
    so an error at a line's end would read "column 1" (of the next line): count from the line's start."""
    text = line.rstrip("\r\n")
    if error.pos >= len(text):
        return "at the end of the line (is the record cut short?)"
    return f"at column {error.pos + 1}"


def iter_jsonl(path: str | Path, tolerate_truncated_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield records; a bad line raises naming the file and line. A process killed mid-write can
    leave a partial last line: with tolerate_truncated_tail it is skipped (resume will redo it)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_truncated_tail and n == len(lines) and not line.endswith("\n"):
                return
            raise InputError(f"{path}, line {n}: invalid JSON {json_error_place(e, line)} ({e.msg})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def truncate_partial_tail(path: str | Path) -> None:
    """Drop an unterminated last line left by a killed writer, so appends start on a clean line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)


class replace_dir:
    """Fill a temporary sibling folder, then swap it in for `final` in one rename.

    A process killed while writing leaves `final` as it was (the old version or
    nothing), never half-written.
    """

    def __init__(self, final: str | Path):
        self.final = Path(final)
        self.tmp = self.final.with_name(f".{self.final.name}.tmp")

    def __enter__(self) -> Path:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, *rest: Any) -> None:
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.final.with_name(f".{self.final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)
