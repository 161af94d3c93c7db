"""The math task: answer extraction, math-verify equivalence, hostile inputs under a time bound, data loading."""

from __future__ import annotations

import json
import threading
import time

import pytest

from r3rl.tasks import available_tasks, load_task
from r3rl.tasks.data import DataError
from r3rl.tasks.math_grade import MAX_TEXT_CHARS, MathGrader
from r3rl.tasks.math_task import MathTask, extract_boxed, reference_answer

TIMEOUT_S = 5.0
# A verdict may take the hard limit plus a worker restart (importing sympy) on a loaded machine; never more.
BOUND_S = TIMEOUT_S + 10.0


@pytest.fixture(scope="module")
def task() -> MathTask:
    return MathTask(timeout_s=TIMEOUT_S)


def timed_verify(task, example, completion):
    start = time.perf_counter()
    verdict = task.verify(example, completion)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND_S, (elapsed, verdict)
    assert verdict.reason and len(verdict.reason) < 300, verdict.reason
    verdict.reason.encode("utf-8")  # loggable: no lone surrogates echoed back
    return verdict


def ex(answer: str) -> dict:
    return {"question": "q", "answer": answer}


# ------------------------------------------------------------------- equivalence
@pytest.mark.parametrize(
    ("reference", "completion", "ok", "reason"),
    [
        ("18", "She earns 9 * 2 = 18 dollars, so \\boxed{18}.", True, "equals the reference 18"),
        ("18", "The answer is 18.", True, "equals"),  # no box: math-verify reads the end of the text
        ("18", "#### 18", True, "equals"),
        ("18", "\\boxed{18 \\text{ dollars}}", True, "equals"),  # units stripped
        ("18", "\\boxed{\\$18}", True, "equals"),
        ("18", "\\boxed{18.0}", True, "equals"),
        ("18", "\\boxed {18}", True, "equals"),
        ("18", "\\fbox{18}", True, "equals"),
        ("18", "\\boxed{17}", False, "answer 17 does not equal the reference 18"),
        ("18", "first \\boxed{17}, no wait: \\boxed{18}", True, "equals"),  # the last box counts
        ("18", "\\boxed{18}? no, \\boxed{17}", False, "does not equal"),
        ("18", "\\boxed{}", False, "empty \\boxed{} answer"),
        ("18", "\\boxed{18", False, "never closed"),
        ("18", "\\boxed{18} and \\boxed{", False, "never closed"),
        ("18", "\\boxed 18", False, "no {...} after it"),
        ("18", "", False, "empty completion"),
        ("18", "   \n", False, "empty completion"),
        ("18", "I do not know.", False, "no mathematical answer"),
        ("\\frac{2}{3}", "\\boxed{2/3}", True, "equals"),
        ("\\frac{2}{3}", "\\boxed{\\dfrac{2}{3}}", True, "equals"),
        ("\\frac{2}{3}", "\\boxed{\\frac{4}{6}}", True, "equals"),
        ("\\frac{2}{3}", "\\boxed{\\frac{3}{2}}", False, "does not equal"),
        ("1250", "\\boxed{1,250}", True, "equals"),
        ("5\\sqrt{2}", "\\boxed{\\sqrt{50}}", True, "equals"),
        ("9\\pi", "$\\boxed{9\\pi}$", True, "equals"),
        ("(4, 2)", "\\boxed{(4,2)}", True, "equals"),
        ("(4, 2)", "\\boxed{(2, 4)}", False, "does not equal"),
        ("(3, \\infty)", "\\boxed{(3, \\infty)}", True, "equals"),
        ("-7", "\\boxed{-7}", True, "equals"),
        ("-7", "\\boxed{7}", False, "does not equal"),
        ("x^2+1", "\\boxed{1 + x^2}", True, "equals"),
        ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}", True, "equals"),  # escaped braces do not end the box
    ],
)
def test_verdicts(task, reference, completion, ok, reason):
    verdict = timed_verify(task, ex(reference), completion)
    assert verdict.ok is ok, verdict
    assert reason in verdict.reason, verdict


# --------------------------------------------------------------------- hostile input
NESTED_FRAC = "\\frac{1}{" * 150 + "2" + "}" * 150  # 1.5k characters: parses slowly, under the size limit
MEGA = 1_000_000


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("\\boxed{9^{9^{9^{9}}}}", ""),
        ("9^9^9^9", ""),
        ("9**9**9**9", ""),
        ("\\boxed{10^{10^{10}}}", ""),
        ("\\boxed{(10^{100000000})!}", ""),
        ("\\boxed{99999999^{99999999}}", ""),
        (f"\\boxed{{{NESTED_FRAC}}}", ""),
        ("\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}", "longer than"),
        ("\\boxed{" + "{" * 5000 + "}", "longer than"),
        ("\\boxed{" + "(" * 900 + "1" + ")" * 900 + "}", ""),
        ("x" * MEGA, "no mathematical answer"),
        ("1" * MEGA, "does not equal"),
        ("\\boxed{" + "1" * MEGA, "longer than"),
        ("\\boxed{" * (MEGA // 7), "never closed"),
        ("\\boxed{", "never closed"),
        ("import os\nos.system('echo hacked')\n", "no mathematical answer"),
        ("\\boxed{__import__('os').system('echo hacked')}", ""),
        ("```python\nfor i in range(10**12):\n    pass\n```", ""),
        ("\\boxed{\ud800}", ""),  # a lone surrogate
        ("\\boxed{1\x008}", ""),
        ("\\boxed{\\left( \\right.}", ""),
        ("\\boxed{\\begin{pmatrix}" + "1 & " * 400 + "1\\end{pmatrix}}", ""),
    ],
)
def test_hostile_inputs_fail_in_bounded_time(task, completion, reason):
    verdict = timed_verify(task, ex("18"), completion)
    assert not verdict.ok, verdict
    assert reason in verdict.reason, verdict


def test_code_in_a_completion_is_never_run(task, tmp_path):
    marker = tmp_path / "ran"
    for completion in (f"\\boxed{{open({str(marker)!r}, 'w')}}", f"open({str(marker)!r}, 'w')\n18"):
        timed_verify(task, ex("18"), completion)
    assert not marker.exists()


def test_non_text_completion(task):
    assert not task.verify(ex("18"), None).ok  # type: ignore[arg-type]
    assert "not text" in task.verify(ex("18"), 18).reason  # type: ignore[arg-type]


def test_verify_works_off_the_main_thread(task):
    """math-verify's own signal timeout raises off the main thread; the worker process does not care."""
    out = []
    thread = threading.Thread(target=lambda: out.append(task.verify(ex("\\frac{1}{2}"), "\\boxed{0.5}")))
    thread.start()
    thread.join(BOUND_S)
    assert out and out[0].ok, out


# -------------------------------------------------------------------- the worker's hard limit
def test_a_late_worker_is_killed_and_replaced():
    grader = MathGrader(timeout_s=0.2)
    try:
        assert grader.grade("18", "\\boxed{18}").ok  # starts the worker; start-up is not timed
        start = time.perf_counter()
        verdict = grader.grade("18", "\\boxed{9^{9^{9^{9}}}}")  # about a second in math-verify
        assert time.perf_counter() - start < 0.9, "the caller waited for the worker instead of killing it"
        assert not verdict.ok and "timed out after 0.2 s" in verdict.reason, verdict
        assert grader.restarts == 1
        assert grader.grade("18", "\\boxed{18}").ok  # a fresh worker answers the next call
    finally:
        grader.close()


def test_a_worker_that_dies_mid_request_is_reported_and_replaced():
    grader = MathGrader(timeout_s=30.0)
    try:
        assert grader.grade("1", "\\boxed{1}").ok
        proc = grader._proc
        assert proc is not None
        threading.Timer(0.3, proc.kill).start()
        verdict = grader.grade("18", "\\boxed{9^{9^{9^{9}}}}")
        assert not verdict.ok and "worker process died" in verdict.reason, verdict
        assert grader.grade("2", "\\boxed{2}").ok
    finally:
        grader.close()


def test_grader_bounds_text_size():
    grader = MathGrader()
    verdict = grader.grade("18", "1" * (MAX_TEXT_CHARS + 1))
    assert not verdict.ok and "too long" in verdict.reason
    assert grader._proc is None  # refused before any worker was needed


# ------------------------------------------------------------------ extraction helpers
@pytest.mark.parametrize(
    ("text", "content", "why"),
    [
        ("so \\boxed{42}.", "42", ""),
        ("\\boxed{\\frac{1}{2}} then \\boxed{\\sqrt{2}}", "\\sqrt{2}", ""),
        ("\\boxed{\\{1\\}}", "\\{1\\}", ""),
        ("no box here", None, ""),
        ("\\boxed{1", None, "never closed"),
        ("\\boxed", None, "no {...}"),
    ],
)
def test_extract_boxed(text, content, why):
    got, reason = extract_boxed(text)
    assert got == content and why in reason and (why or not reason)


@pytest.mark.parametrize(
    ("solution", "reference"),
    [
        ("3 * 4 = 12\n#### 12", "12"),
        ("#### 1,250", "1250"),
        ("#### -1,250.5", "-1250.5"),
        ("#### 1,2", "1,2"),  # not a thousands separator: left alone
        ("so $x = \\boxed{\\frac{2}{3}}$.", "\\frac{2}{3}"),
        ("  \\frac{2}{3} ", "\\frac{2}{3}"),
    ],
)
def test_reference_answer(solution, reference):
    assert reference_answer(solution) == reference


# ------------------------------------------------------------------------- data loading
def test_builtin_sample_loads_offline_and_every_reference_verifies():
    t = load_task("math")
    assert isinstance(t, MathTask)
    assert available_tasks()["math"] == "r3rl.tasks.math_task:MathTask"
    train, test = t.load_examples("train"), t.load_examples("test")
    assert len(train) + len(test) == 40 and len(test) == 4
    assert not {e["question"] for e in train} & {e["question"] for e in test}
    for example in train + test:
        assert t.verify(example, f"The answer is \\boxed{{{example['answer']}}}.").ok, example
    assert "\\boxed{}" in t.prompt(train[0]) and train[0]["question"] in t.prompt(train[0])


def test_loads_gsm8k_and_math_files(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps(r) for r in [
        {"question": "2+2?", "answer": "2+2=4\n#### 4"},
        {"question": "Rent?", "answer": "#### 1,000", "id": 7},
    ]))
    math_file = tmp_path / "math.json"
    math_file.write_text(json.dumps([{"problem": "Half?", "solution": "It is $\\boxed{\\frac12}$."},
                                     {"problem": "Bare?", "answer": 3}]))
    t = MathTask(path=str(gsm), test_path=str(math_file))
    assert t.load_examples("train") == [{"question": "2+2?", "answer": "4"},
                                        {"question": "Rent?", "answer": "1000", "id": "7"}]
    test = t.load_examples("test")
    assert test == [{"question": "Half?", "answer": "\\frac12"}, {"question": "Bare?", "answer": "3"}]
    assert t.verify(test[0], "\\boxed{0.5}").ok


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"answer": "#### 4"}, "row 1 of .*: missing field 'question' \\(or 'problem'\\)"),
        ({"question": "q"}, "row 1 of .*: missing field 'answer' \\(or 'solution'\\)"),
        ({"question": "", "answer": "4"}, "field 'question' must be a non-empty string"),
        ({"question": "q", "answer": ["4"]}, "field 'answer' must be a string, got list"),
        ({"question": "q", "solution": "so \\boxed{4"}, "field 'solution': the last \\\\boxed\\{ is never closed"),
        ({"question": "q", "answer": "####  "}, "field 'answer': the final answer is empty"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        MathTask(path=str(path)).load_examples("train")


def test_bad_options():
    with pytest.raises(ValueError, match="test_path needs path"):
        MathTask(test_path="x.jsonl")
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        MathTask(timeout_s=0)
