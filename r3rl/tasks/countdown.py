"""Countdown: combine the given numbers with + - * / into an equation that equals the target.

One of the paper's two tasks (the published data is Countdown-Tasks-3to4: 3 or 4
numbers, `{"nums": [...], "target": int}`). Without a file, solvable instances
are generated from a seed: a random expression over random numbers is built
first and its value, when it is a positive integer, becomes the target.

The answer is the last `<answer>...</answer>` block of the completion. It may
name the target on either side of an '=' ("(25 - 5) * 4 = 80" or
"80 = (25 - 5) * 4"); the rest is checked by
`r3rl.tasks.safe_arith.check_equation` (exact, bounded, no eval): each given
number exactly once, only + - * / and parentheses, no unary minus. Every
failure reason is a plain sentence, fit to show the model (`include_reason`).
"""

from __future__ import annotations

import random
from typing import Any

from r3rl.errors import InputError
from r3rl.tasks.base import Example
from r3rl.tasks.data import FileTask, load_records, row_error, sample
from r3rl.tasks.safe_arith import (DEFAULT_LIMITS, DISALLOWED_OPERATOR, DIVISION_BY_ZERO, NOT_AN_EXPRESSION,
                                   NUMBERS_NOT_USED_ONCE, WRONG_VALUE, check_equation)
from r3rl.types import Verdict

__all__ = ["CountdownTask", "extract_answer", "generate_instance", "PROMPT_TEMPLATE"]

PROMPT_TEMPLATE = (
    "Using the numbers {nums}, write an equation that equals {target}. "
    "Use each number exactly once, and only the operations +, -, *, / and parentheses. "
    "Think it through, then give the final equation inside <answer></answer> tags, "
    "for example <answer>(1 + 2) * 3</answer>."
)

_OPEN, _CLOSE = "<answer>", "</answer>"
NO_ANSWER = "no_answer"
_OPS = "+-*/"
# Attempts per generated instance before giving up: a random expression over
# numbers <= 99 lands in 1..1000 about a third of the time.
_MAX_TRIES_PER_INSTANCE = 1000


def extract_answer(completion: str) -> tuple[str | None, str]:
    """(content of the last <answer>...</answer> block, "") or (None, why there is none).

    rfind keeps this linear on megabytes of text; a regex with backtracking would not.
    """
    end = completion.rfind(_CLOSE)
    last_open = completion.rfind(_OPEN)
    if end < 0:
        return None, ("no <answer>...</answer> block" if last_open < 0 else "the last <answer> tag is never closed")
    if last_open > end:
        return None, "the last <answer> tag is never closed"
    start = completion.rfind(_OPEN, 0, end)
    if start < 0:
        return None, "</answer> without a matching <answer>"
    return completion[start + len(_OPEN):end].strip(), ""


def _random_expression(rng: random.Random, nums: list[int]) -> tuple[str, int] | None:
    """A random fully bracketed expression using each of `nums` once, with its value.

    Divisions are only chosen where they are exact, so every intermediate value
    is an integer (as in hand-solved Countdown); None when no operator fits.
    """
    if len(nums) == 1:
        return str(nums[0]), nums[0]
    cut = rng.randint(1, len(nums) - 1)
    left = _random_expression(rng, nums[:cut])
    right = _random_expression(rng, nums[cut:])
    if left is None or right is None:
        return None
    (ltxt, lval), (rtxt, rval) = left, right
    op = rng.choice(_OPS if rval != 0 and lval % rval == 0 else _OPS[:3])
    value = lval + rval if op == "+" else lval - rval if op == "-" else lval * rval if op == "*" else lval // rval
    wrap = lambda t: t if t.isdigit() else f"({t})"  # noqa: E731 - brackets every compound operand
    return f"{wrap(ltxt)} {op} {wrap(rtxt)}", value


def generate_instance(rng: random.Random, count: int, max_number: int = 99, max_target: int = 1000) -> Example:
    """One solvable instance: `count` numbers in 1..max_number and a target in 1..max_target.

    The instance carries the expression it was built from as "solution"
    (never shown to the model; useful for tests and debugging).
    """
    for _ in range(_MAX_TRIES_PER_INSTANCE):
        nums = [rng.randint(1, max_number) for _ in range(count)]
        built = _random_expression(rng, nums)
        if built is None:
            continue
        text, value = built
        if 1 <= value <= max_target:
            shown = list(nums)
            rng.shuffle(shown)  # the order of the numbers should not give away the expression
            return {"nums": shown, "target": value, "solution": text}
    raise RuntimeError(
        f"no solvable instance with {count} numbers <= {max_number} and target <= {max_target} "
        f"in {_MAX_TRIES_PER_INSTANCE} tries; loosen max_number/max_target"
    )


def _as_int(value: Any) -> int | None:
    """An int from an int or an integral float (JSON/Parquet writers vary); None otherwise. bool is not an int here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def validate_row(row: dict[str, Any], source: str, index: int) -> Example:
    """A clean example from a file row; errors name the file, the row and the field."""
    for field in ("nums", "target"):
        if field not in row:
            raise row_error(source, index, f"missing field {field!r} (row has {sorted(row)})")
    raw_nums = row["nums"]
    if not isinstance(raw_nums, (list, tuple)) or not raw_nums:
        raise row_error(source, index, f"field 'nums' must be a non-empty list of integers, got {raw_nums!r}")
    nums = [_as_int(x) for x in raw_nums]
    if any(x is None or x < 0 for x in nums):
        raise row_error(source, index, f"field 'nums' must hold non-negative integers, got {raw_nums!r}")
    target = _as_int(row["target"])
    if target is None:
        raise row_error(source, index, f"field 'target' must be an integer, got {row['target']!r}")
    example: Example = {"nums": nums, "target": target}
    if "id" in row and row["id"] is not None:
        example["id"] = str(row["id"])
    return example


class CountdownTask(FileTask):
    """Countdown with 3 or 4 numbers: generated offline, or read from a file / HF dataset.

    Options:
        path: JSON/JSONL/Parquet file or HF dataset id with "nums" and "target"
            (e.g. Countdown-Tasks-3to4). None: generate instances.
        test_path: with `path`, the test split is this whole source (else a
            held-out `test_fraction` of `path`, split by a hash of the instance).
        n_train, n_test: sizes of the generated splits.
        num_range: (min, max) count of numbers per generated instance.
        max_number, max_target: ranges of generated numbers and targets.
        seed: the generated dataset's seed (which instances exist); the `seed` of
            `load_examples` only chooses a sample among them.
    """

    name = "countdown"
    failure_classes = {
        NO_ANSWER: "no complete, non-empty <answer>...</answer> block (missing, never closed, or empty)",
        NOT_AN_EXPRESSION: "the answer is not an arithmetic expression over integers (words, stray characters, "
                           "malformed syntax, decimals, a misused '=', or over the size limits)",
        DISALLOWED_OPERATOR: "the expression uses an operation other than binary + - * / (powers, //, %, unary minus)",
        NUMBERS_NOT_USED_ONCE: "the expression does not use each given number exactly once",
        DIVISION_BY_ZERO: "the expression divides by zero",
        WRONG_VALUE: "a valid expression over the given numbers whose value (or claimed result) is not the target",
    }

    def __init__(
        self,
        path: str | None = None,
        test_path: str | None = None,
        test_fraction: float = 0.1,
        n_train: int = 10_000,
        n_test: int = 1_000,
        num_range: tuple[int, int] | list[int] = (3, 4),
        max_number: int = 99,
        max_target: int = 1000,
        seed: int = 0,
    ):
        lo, hi = tuple(num_range)
        if not 2 <= lo <= hi <= 8:
            raise InputError(f"num_range must be (min, max) with 2 <= min <= max <= 8, got {num_range!r}")
        if n_train < 0 or n_test < 0:
            raise InputError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
        if max_number < 1 or max_target < 1:
            raise InputError(f"max_number and max_target must be >= 1, got {max_number}, {max_target}")
        super().__init__(path, test_path, test_fraction)
        self.n_train, self.n_test = int(n_train), int(n_test)
        self.num_range = (int(lo), int(hi))
        self.max_number, self.max_target, self.seed = int(max_number), int(max_target), int(seed)
        self._splits: dict[str, list[Example]] | None = None

    # ----------------------------------------------------------------- examples
    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise InputError(f"split must be 'train' or 'test', got {split!r}")
        if self.path is None:
            return sample(self._generated()[split], n, seed)
        return super().load_examples(split, n, seed)

    def _generated(self) -> dict[str, list[Example]]:
        """Both splits from one seeded stream: the first n_test distinct instances are the test split.

        Instances are deduplicated on (sorted numbers, target) across the stream,
        so train and test never share a problem, and the test split does not
        change when n_train does.
        """
        if self._splits is None:
            rng = random.Random(f"countdown/{self.seed}/{self.num_range}/{self.max_number}/{self.max_target}")
            seen: set[tuple[tuple[int, ...], int]] = set()
            out: list[Example] = []
            want = self.n_test + self.n_train
            # Duplicates are rare (~1e7 possible instances); the cap only stops an endless loop on tiny ranges.
            for _ in range(50 * want + 100):
                if len(out) >= want:
                    break
                ex = generate_instance(rng, rng.randint(*self.num_range), self.max_number, self.max_target)
                key = (tuple(sorted(ex["nums"])), ex["target"])
                if key in seen:
                    continue
                seen.add(key)
                out.append(ex)
            if len(out) < want:
                raise InputError(f"only {len(out)} distinct instances exist for these options; asked for {want}")
            for i, ex in enumerate(out):
                split = "test" if i < self.n_test else "train"
                ex["id"] = f"countdown-{self.seed}-{split}-{i if split == 'test' else i - self.n_test}"
            self._splits = {"test": out[: self.n_test], "train": out[self.n_test:]}
        return self._splits

    def read_source(self, source: str | None) -> list[Example]:
        assert source is not None, "generated instances do not come from a source (see load_examples)"
        return [validate_row(r, str(source), i) for i, r in enumerate(load_records(source))]

    def split_key(self, example: Example) -> tuple[tuple[int, ...], int]:
        return tuple(sorted(example["nums"])), example["target"]

    # ------------------------------------------------------------------- prompt
    def prompt(self, example: Example) -> str:
        return PROMPT_TEMPLATE.format(nums=list(example["nums"]), target=example["target"])

    # ------------------------------------------------------------------- verify
    def verify(self, example: Example, completion: str) -> Verdict:
        """Pass iff the last <answer> block is an equation over the given numbers equal to the target."""
        if not isinstance(completion, str):
            return Verdict(False, f"completion is not text: {type(completion).__name__}", NO_ANSWER)
        answer, why = extract_answer(completion)
        if answer is None:
            return Verdict(False, why, NO_ANSWER)
        if not answer:
            return Verdict(False, "empty <answer> block", NO_ANSWER)
        if len(answer) > DEFAULT_LIMITS.max_chars:
            return Verdict(False, f"answer too long ({len(answer)} characters, limit {DEFAULT_LIMITS.max_chars})",
                           NOT_AN_EXPRESSION)
        return check_equation(answer, example["nums"], example["target"])
