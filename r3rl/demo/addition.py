"""Integer addition with a tagged answer: the offline demo's task.

An example is `{"a": int, "b": int}` (optionally `"id"`). The model is asked for
a + b inside `<answer></answer>` tags; the verifier reads the last such block.

Why this task: it is verifiable exactly, needs no data download, and has a
natural "slow path" (column-by-column addition with carries) that a reflection
can write out, so a small model can show the paper's mechanism: reflections
that do the work make the retry pass, generic ones do not.

Examples are generated from a seed, or read from a JSON / JSONL file (`path=`).
Generated train and test splits are disjoint: a pair belongs to the test split
when a hash of the unordered pair {a, b} falls in the test fraction, so neither
(a, b) nor (b, a) of a test problem is ever trained on.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

from r3rl.errors import InputError
from r3rl.tasks.base import Example
from r3rl.tasks.data import FileTask
from r3rl.types import Verdict

PROMPT_TEMPLATE = "What is {a} + {b}? Put the final answer inside <answer></answer> tags."

_OPEN, _CLOSE = "<answer>", "</answer>"
# An answer longer than this is not a plausible sum; refusing it early keeps
# int() away from megabyte-long digit strings.
MAX_ANSWER_CHARS = 20
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Generated draws give up on uniqueness after this many times the requested
# count of attempts (only matters when n approaches the size of the split).
_MAX_DRAW_FACTOR = 50
# Spaces of at most this many ordered pairs are counted exactly (about 0.1 s).
_COUNTABLE_PAIRS = 100_000


def extract_answer(completion: str) -> str | None:
    """The stripped content of the last `<answer>...</answer>` block, or None if there is none.

    Uses rfind rather than a regex so that adversarial inputs (megabytes of
    unclosed tags) stay linear-time.
    """
    end = completion.rfind(_CLOSE)
    if end < 0:
        return None
    start = completion.rfind(_OPEN, 0, end)
    if start < 0:
        return None
    return completion[start + len(_OPEN):end].strip()


def pair_in_test_split(a: int, b: int, test_fraction: float) -> bool:
    """Deterministic, order-free split assignment of the problem a + b."""
    lo, hi = sorted((int(a), int(b)))
    h = hashlib.sha1(f"{lo}+{hi}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < test_fraction


def _check_example(row: Any, where: str) -> Example:
    """Validate one row from a file; the error names the file and the row."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object with integer fields 'a' and 'b', got {type(row).__name__}")
    for key in ("a", "b"):
        if key not in row:
            raise InputError(f"{where}: missing field {key!r} (row has {sorted(row)})")
        v = row[key]
        # bool is an int subclass; True + 1 is not an addition problem.
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{where}: field {key!r} must be an integer, got {v!r}")
    ex: Example = {"a": row["a"], "b": row["b"]}
    if "id" in row:
        ex["id"] = str(row["id"])
    return ex


def read_examples_file(path: str | Path) -> list[Example]:
    """Read examples from a .json (a list of objects) or .jsonl (one object per line) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"addition task: no such file {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:line {lineno}: invalid JSON: {e.msg}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: a .json file must hold a list of examples, got {type(data).__name__}")
        rows = [(f"{path}:row {i}", row) for i, row in enumerate(data)]
    return [_check_example(row, where) for where, row in rows]


class AdditionTask(FileTask):
    """Add two non-negative integers; answer inside `<answer></answer>` tags.

    Options:
        digits: number of digits of each generated operand (2: 10..99, what the demo model learned).
        test_fraction: share of all problems held out as the test split.
        path: read examples from this JSON/JSONL file instead of generating them;
            the file is split into train/test by the same hash rule.
        test_path: with `path`, the test split is this whole file and the train
            split is the whole of `path` (no hashing).
    """

    name = "addition"
    failure_classes = {
        "no_answer": "no non-empty <answer>...</answer> block",
        "not_an_integer": "the answer is not a plain integer (words, decimals, an expression, or over 20 characters)",
        "wrong_sum": "an integer that is not a + b",
        "invalid_example": "the example itself has no integer 'a' and 'b' (a data problem, not the model's)",
    }

    def __init__(self, digits: int = 2, test_fraction: float = 0.1, path: str | None = None,
                 test_path: str | None = None):
        if not 1 <= int(digits) <= 18:
            raise InputError(f"digits must be in 1..18, got {digits}")
        super().__init__(path, test_path, test_fraction)
        self.digits = int(digits)
        self._sizes: dict[tuple[int, int, bool], int] = {}

    # ----------------------------------------------------------------- examples
    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise InputError(f"split must be 'train' or 'test', got {split!r}")
        if self.path is not None:
            return self._from_files(split, n, seed)
        return self._generate(split, n if n is not None else 1000, seed)

    def read_source(self, source: str | None) -> list[Example]:
        assert source is not None, "generated problems do not come from a file (see load_examples)"
        return read_examples_file(source)

    def _from_files(self, split: str, n: int | None, seed: int) -> list[Example]:
        # Split by the pair's hash (pair_in_test_split), not FileTask's exact-size holdout: generated and
        # file-read problems then fall in the same split.
        if self.test_path is not None:
            rows = list(self._source(self.test_path if split == "test" else self.path))
        else:
            want_test = split == "test"
            rows = [r for r in self._source(self.path)
                    if pair_in_test_split(r["a"], r["b"], self.test_fraction) == want_test]
        if n is not None and n < len(rows):
            rows = random.Random(seed).sample(rows, n)
        return rows

    def _generate(self, split: str, n: int, seed: int) -> list[Example]:
        """n distinct problems of the split, drawn uniformly by rejection (same seed, same list)."""
        lo, hi = (10 ** (self.digits - 1) if self.digits > 1 else 0), 10**self.digits - 1
        # Seed from (seed, split, digits) so the splits do not share a random stream.
        rng = random.Random(f"addition/{self.digits}/{split}/{seed}")
        want_test = split == "test"
        if (hi - lo + 1) ** 2 <= _COUNTABLE_PAIRS:
            # A small space can run out: stop when every pair of the split is drawn,
            # instead of spinning through the whole draw budget.
            n = min(n, self._split_size(lo, hi, want_test))
        out: list[Example] = []
        seen: set[tuple[int, int]] = set()
        for _ in range(max(n, 1) * _MAX_DRAW_FACTOR):
            if len(out) >= n:
                break
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if (a, b) in seen or pair_in_test_split(a, b, self.test_fraction) != want_test:
                continue
            seen.add((a, b))
            out.append({"a": a, "b": b, "id": f"{a}+{b}"})
        return out

    def _split_size(self, lo: int, hi: int, want_test: bool) -> int:
        """How many ordered pairs in [lo, hi]^2 belong to the split (only for small spaces)."""
        key = (lo, hi, want_test)
        if key not in self._sizes:
            self._sizes[key] = sum(pair_in_test_split(a, b, self.test_fraction) == want_test
                                   for a in range(lo, hi + 1) for b in range(lo, hi + 1))
        return self._sizes[key]

    # ------------------------------------------------------------------- prompt
    def prompt(self, example: Example) -> str:
        return PROMPT_TEMPLATE.format(a=example["a"], b=example["b"])

    # ------------------------------------------------------------------- verify
    def verify(self, example: Example, completion: str) -> Verdict:
        try:
            expected = int(example["a"]) + int(example["b"])
        except (KeyError, TypeError, ValueError) as e:
            return Verdict(False, f"bad example (needs integer 'a' and 'b'): {e!r}", "invalid_example")
        if not isinstance(completion, str):
            return Verdict(False, f"completion is not text: {type(completion).__name__}", "no_answer")
        answer = extract_answer(completion)
        if answer is None:
            return Verdict(False, "no <answer>...</answer> block", "no_answer")
        if not answer:
            return Verdict(False, "empty answer", "no_answer")
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict(False, f"answer too long ({len(answer)} chars): {answer[:MAX_ANSWER_CHARS]!r}...",
                           "not_an_integer")
        if not _INT_RE.fullmatch(answer):
            return Verdict(False, f"answer is not an integer: {answer!r}", "not_an_integer")
        got = int(answer)
        if got != expected:
            return Verdict(False, f"wrong answer: {got}", "wrong_sum")
        return Verdict(True, "correct")
