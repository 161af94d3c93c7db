"""Math word problems: a free-form answer, judged equal to the reference by Hugging Face's math-verify.

An example is `{"question": str, "answer": str}` in GSM8K or MATH style:

- GSM8K: the answer is a worked solution ending with `#### 42`; the reference
  is what follows the last `####` (thousands separators dropped: `1,250` is 1250).
- MATH: the answer (or `solution`) is a LaTeX solution with the final answer in
  `\\boxed{...}`; the reference is the last boxed content.
- Otherwise the whole answer string is the reference (e.g. `"\\frac{2}{3}"`).

`problem` is accepted for `question` and `solution` for `answer` (the MATH
dataset's field names). The reference is extracted once, at load time, and
stored as the example's `answer`.

A completion's final answer is its last `\\boxed{...}` (the prompt asks for one);
without a box, math-verify's own extraction reads the end of the completion
("the answer is 42", a last number or LaTeX expression). The comparison is
math-verify's (LaTeX, fractions, `\\text{}` units, sets, intervals), run by
`r3rl.tasks.math_grade` in a worker process under a hard time limit.

The module is not called `math.py` so that nothing in this package can ever
import it in place of the standard library's `math`.
"""

from __future__ import annotations

import re
from typing import Any

from r3rl.errors import InputError
from r3rl.tasks.base import Example
from r3rl.tasks.data import FileTask, load_records, row_error
from r3rl.tasks.math_grade import MAX_TEXT_CHARS, NO_FINAL_ANSWER, UNVERIFIABLE, WRONG_ANSWER, default_grader
from r3rl.types import Verdict

__all__ = ["MathTask", "extract_boxed", "reference_answer", "PROMPT_SUFFIX"]

PROMPT_SUFFIX = "Solve the problem step by step, then give the final answer inside \\boxed{}, for example \\boxed{42}."

#: how much of the end of an unboxed completion math-verify reads (the final answer is at the end)
TAIL_CHARS = 500
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def extract_boxed(text: str, limit: int = MAX_TEXT_CHARS) -> tuple[str | None, str]:
    """(content of the last `\\boxed{...}` / `\\fbox{...}`, "") or (None, why there is none).

    Braces are matched by a scan that stops after `limit` characters, so a
    megabyte of text after an unclosed box costs nothing. (None, "") means the
    text has no box at all.
    """
    at = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if at < 0:
        return None, ""
    i = at + (6 if text.startswith("\\boxed", at) else 5)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None, "the last \\boxed has no {...} after it"
    depth, start = 0, i + 1
    for j in range(i, min(len(text), start + limit + 1)):
        ch = text[j]
        if ch == "{" and text[j - 1] != "\\":
            depth += 1
        elif ch == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start:j].strip(), ""
    if len(text) > start + limit:
        return None, f"the last \\boxed{{...}} is longer than {limit} characters or never closed"
    return None, "the last \\boxed{ is never closed"


def reference_answer(solution: str) -> str:
    """The final answer of a GSM8K (`#### 42`) or MATH (`\\boxed{...}`) solution, else the text itself.

    Raises ValueError when the solution has an unclosed box or nothing to compare.
    """
    if "####" in solution:
        ref = solution.rsplit("####", 1)[1].strip()
        if _THOUSANDS.fullmatch(ref):
            ref = ref.replace(",", "")
    else:
        boxed, why = extract_boxed(solution)
        if why:
            raise ValueError(why)
        ref = boxed if boxed is not None else solution.strip()
    if not ref:
        raise ValueError("the final answer is empty")
    if len(ref) > MAX_TEXT_CHARS:
        raise ValueError(f"the final answer is {len(ref)} characters long (limit {MAX_TEXT_CHARS})")
    return ref


def _first_text(row: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any]:
    for name in names:
        if name in row:
            return name, row[name]
    raise ValueError(f"missing field {names[0]!r} (or {names[1]!r}); the row has {sorted(row)}")


def validate_row(row: dict[str, Any], source: str, index: int) -> Example:
    """A clean example `{"question", "answer": reference[, "id"]}`; errors name the file, row and field."""
    try:
        qname, question = _first_text(row, ("question", "problem"))
        aname, answer = _first_text(row, ("answer", "solution"))
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"field {qname!r} must be a non-empty string, got {question!r}"[:200])
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise ValueError(f"field {aname!r} must be a string, got {type(answer).__name__}")
        try:
            reference = reference_answer(answer)
        except ValueError as e:
            raise ValueError(f"field {aname!r}: {e}") from None
    except ValueError as e:
        raise row_error(source, index, str(e)) from None
    example: Example = {"question": question, "answer": reference}
    if row.get("id") is not None:
        example["id"] = str(row["id"])
    return example


# A power whose exponent has 4+ digits, or a tower of powers (a^b^c): no answer to a word problem,
# and what sympy spends seconds evaluating. Checked before the worker is asked.
_HUGE_POWER = re.compile(r"(\*\*|\^)\s*[{(]?\s*\+?\d{4,}|(\*\*|\^)\s*[{(]?\s*\+?\d+\s*[})]?\s*(\*\*|\^)")

class MathTask(FileTask):
    """GSM8K / MATH-style problems, verified with math-verify under a time limit.

    Options:
        path: JSON/JSONL/Parquet file or HF dataset id with "question" and
            "answer" (e.g. openai/gsm8k with its "main" config saved to a file).
            None: the built-in offline sample of 40 problems (r3rl.tasks.math_sample).
        test_path: a separate test source; without it the test split is a
            deterministic held-out `test_fraction` of `path`, split by question.
        test_fraction: share of distinct questions held out as the test split.
        timeout_s: hard limit in seconds on verifying one completion.
    """

    name = "math"
    failure_classes = {
        NO_FINAL_ANSWER: "no final answer to compare: an empty completion, a missing, empty, unclosed or overlong "
                         "\\boxed{}, or nothing mathematical in the completion's end",
        WRONG_ANSWER: "a final answer that math-verify parsed and found unequal to the reference",
        UNVERIFIABLE: "the answer could not be checked: too long, too large a power, nested too deeply, "
                      "or the check timed out or failed (the reason says which)",
    }

    def __init__(self, path: str | None = None, test_path: str | None = None, test_fraction: float = 0.1,
                 timeout_s: float = 5.0):
        super().__init__(path, test_path, test_fraction)
        if not timeout_s > 0:
            raise InputError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)

    # ----------------------------------------------------------------- examples
    def read_source(self, source: str | None) -> list[Example]:
        if source is None:
            from r3rl.tasks.math_sample import SAMPLE

            rows, name = SAMPLE, "r3rl.tasks.math_sample"
        else:
            rows, name = load_records(source), str(source)
        return [validate_row(r, name, i) for i, r in enumerate(rows)]

    def split_key(self, example: Example) -> str:
        return example["question"]

    # ------------------------------------------------------------------- prompt
    def prompt(self, example: Example) -> str:
        return f"{example['question']}\n\n{PROMPT_SUFFIX}"

    # ------------------------------------------------------------------- verify
    def verify(self, example: Example, completion: str) -> Verdict:
        """Pass iff the completion's final answer equals the reference by math-verify."""
        if not isinstance(completion, str):
            return Verdict(False, f"completion is not text: {type(completion).__name__}", NO_FINAL_ANSWER)
        if not completion.strip():
            return Verdict(False, "empty completion", NO_FINAL_ANSWER)
        boxed, why = extract_boxed(completion)
        if why:
            return Verdict(False, why, NO_FINAL_ANSWER)
        if boxed is not None:
            if not boxed:
                return Verdict(False, "empty \\boxed{} answer", NO_FINAL_ANSWER)
            # Re-boxed so that math-verify reads exactly this answer and strips units the way it does for boxes.
            answer = f"\\boxed{{{boxed}}}"
        else:
            answer = completion[-TAIL_CHARS:]
        if _HUGE_POWER.search(answer):
            # sympy would try to evaluate it and only math-verify's 1 s alarm would stop it
            return Verdict(False, "the answer raises a number to a power too large to evaluate", UNVERIFIABLE)
        return default_grader(self.timeout_s).grade(str(example["answer"]), answer)
