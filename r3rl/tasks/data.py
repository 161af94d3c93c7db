"""Loading task records from local files or the Hugging Face hub, and deterministic held-out splits.

`load_records` returns plain dicts and knows nothing about any task; each task
validates its rows and names the offending row and field (see `row_error`).
Errors name the file and the line or row, because a 60k-row dataset with one bad
line is otherwise a needle in a haystack.

Row numbers in messages are 1-based, like line numbers.

`FileTask` is the base of the tasks whose examples are rows of such a source:
it owns the `path`, `test_path` and `test_fraction` options and the
cached, split loading, so a command can ask `isinstance(task, FileTask)` to
know that a task reads a file (and how it is split).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path
from abc import abstractmethod
from typing import Any, Callable, Hashable, TypeVar

from r3rl.errors import InputError
from r3rl.runtime.io import json_error_place
from r3rl.tasks.base import Example, Task

__all__ = ["DataError", "FileTask", "load_records", "row_error", "holdout_split", "split_examples", "sample"]

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
T = TypeVar("T")


class DataError(InputError):
    """A data file or record is malformed; the message names the file and the line, row and field."""


def row_error(source: str, row: int, message: str) -> DataError:
    """An error about 0-based record `row` of `source`, worded 1-based for people."""
    return DataError(f"row {row + 1} of {source}: {message}")


def _load_json(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _load_jsonl(path)  # JSON Lines saved as .json: read it as what it is
        raise DataError(f"invalid JSON in {path} at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{path}: expected a list of records or {{"data": [...]}}, got {type(data).__name__}')
    return data


def _load_jsonl(path: Path) -> list[Any]:
    rows: list[Any] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON on line {lineno} of {path}: {e.msg} ({json_error_place(e, line)})") from None
            if not isinstance(rows[-1], dict):
                raise DataError(f"line {lineno} of {path}: expected a JSON object, got {type(rows[-1]).__name__}")
    return rows


def _load_parquet(path: Path) -> list[Any]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except pyarrow.ArrowException as e:
        raise DataError(f"cannot read Parquet file {path}: {e}") from e


def _load_hub(dataset_id: str, split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        return load_dataset(dataset_id, split=split).to_list()
    except (OSError, ConnectionError, ValueError) as e:  # datasets' hub, offline and bad-split errors
        from r3rl.errors import hub_error_hint

        if "split" in str(e).lower() and "unknown split" in str(e).lower():
            raise DataError(f"dataset {dataset_id!r} has no split {split!r}: {e}") from None
        raise DataError(hub_error_hint(dataset_id, "dataset", e) + " (task.options.path may also be a local "
                        ".json, .jsonl or .parquet file)") from None


def load_records(path_or_id: str | os.PathLike[str], split: str = "train") -> list[dict[str, Any]]:
    """Records from a local .json / .jsonl / .parquet file, or a Hugging Face dataset id.

    A .json file holds a list of objects or `{"data": [...]}`; a .jsonl file one
    object per line (blank lines skipped). `split` only applies to hub datasets
    and local dataset folders (passed to `datasets.load_dataset`). A name with a
    local-file suffix that does not exist is an error, not a hub lookup, so a typo
    in a path is reported as such.
    """
    path = Path(path_or_id)
    suffix = path.suffix.lower()
    if path.is_file():
        loaders: dict[str, Callable[[Path], list[Any]]] = {
            ".json": _load_json, ".jsonl": _load_jsonl, ".parquet": _load_parquet,
        }
        if suffix not in loaders:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")
        rows = loaders[suffix](path)
    elif suffix in LOCAL_SUFFIXES:
        from r3rl.runtime.file_checks import relative_note

        raise FileNotFoundError(f"no such data file: {path}{relative_note(path)}")
    else:
        rows = _load_hub(str(path_or_id), split)
    if not rows:
        raise DataError(f"{path_or_id} holds no records")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise row_error(str(path_or_id), i, f"expected an object, got {type(row).__name__}")
    return rows


def _key_hash(key: Hashable) -> bytes:
    return hashlib.sha1(repr(key).encode("utf-8")).digest()


def holdout_split(records: list[T], split: str, test_fraction: float, key: Callable[[T], Hashable]) -> list[T]:
    """The "train" or "test" part of `records`, split deterministically by a hash of `key(record)`.

    The test part is the records whose key hash is among the smallest
    ceil(test_fraction * number of distinct keys): the size is exact (even for a
    20-record sample), it does not depend on file order, and records with equal
    keys (duplicates, the same query twice) always land in the same split, so
    nothing tested was trained on. Order within the split is the file order.
    """
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    hashes = [_key_hash(key(r)) for r in records]
    distinct = sorted(set(hashes))
    n_test = math.ceil(test_fraction * len(distinct)) if distinct else 0
    test_hashes = set(distinct[:n_test])
    want_test = split == "test"
    return [r for r, h in zip(records, hashes) if (h in test_hashes) == want_test]


def split_examples(split: str, n: int | None, seed: int, load: Callable[[Any], list[T]], path: Any,
                   test_path: Any, test_fraction: float, key: Callable[[T], Hashable]) -> list[T]:
    """The examples of `split` for a file-backed task: a separate test file when given, else the
    hash-based held-out part of `path` (see holdout_split); then a seeded sample of n."""
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if test_path is not None:
        pool = load(test_path if split == "test" else path)
    else:
        pool = holdout_split(load(path), split, test_fraction, key=key)
    return sample(pool, n, seed)


def sample(records: list[T], n: int | None, seed: int) -> list[T]:
    """All records (in order) when n is None or covers them, else a seeded random sample of n."""
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n is None or n >= len(records):
        return list(records)
    return random.Random(seed).sample(records, n)


class FileTask(Task):
    """A task whose examples are the rows of a data file or Hugging Face dataset.

    Options (every file-backed task takes them):
        path: JSON/JSONL/Parquet file or HF dataset id; None: the task's
            built-in examples (a bundled sample, or generated ones).
        test_path: a separate test source; without it the test split is a
            deterministic held-out `test_fraction` of `path` (see holdout_split).
        test_fraction: share of distinct `split_key`s held out as the test split.

    Subclasses implement `read_source` (validated examples of one source) and may
    override `split_key` (what must never be in both splits). The default
    `load_examples` is `split_examples` over the cached sources; a task with its
    own split rule (generated examples, another hash) overrides it and keeps the
    options' meaning.
    """

    def __init__(self, path: str | None = None, test_path: str | None = None, test_fraction: float = 0.1):
        if not 0.0 < float(test_fraction) < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if test_path is not None and path is None:
            raise InputError("test_path needs path (the train data) too")
        self.path, self.test_path, self.test_fraction = path, test_path, float(test_fraction)
        self._sources: dict[str, list[Example]] = {}

    @abstractmethod
    def read_source(self, source: str | None) -> list[Example]:
        """The validated examples of one source (None: the built-in ones); errors name the file, row and field."""

    def split_key(self, example: Example) -> Hashable:
        """What decides an example's split: examples with equal keys are always in the same split."""
        return self.example_id(example)

    def _source(self, source: str | None) -> list[Example]:
        key = "<built-in>" if source is None else str(source)
        if key not in self._sources:
            self._sources[key] = self.read_source(source)
        return self._sources[key]

    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        return split_examples(split, n, seed, self._source, self.path, self.test_path, self.test_fraction,
                              key=self.split_key)
