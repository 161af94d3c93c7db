"""Failure classes of the built-in verifiers: every class of a task's vocabulary has inputs that
produce it, passes carry none, and no failure, hostile or not, falls outside the vocabulary.

Each table below is keyed by class and must cover the task's whole vocabulary, so a class added
to a task without a test (or a test for a class the task dropped) fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from r3rl.checks.hostile import hostile_case
from r3rl.demo.addition import AdditionTask
from r3rl.tasks.base import Task
from r3rl.tasks.bfcl import BFCLTask
from r3rl.tasks.bfcl_ast import ERROR_TYPES, _check_list_of_dicts, _Mismatch, check_calls
from r3rl.tasks.countdown import CountdownTask
from r3rl.tasks.fc_parse import ToolCall
from r3rl.tasks.function_calling import FunctionCallingTask, normalize_example
from r3rl.tasks.math_task import MathTask
from r3rl.types import Verdict

BFCL_FIXTURE = Path(__file__).parent / "fixtures" / "bfcl"


def assert_classified(task: Task, verdict: Verdict) -> None:
    """The invariant every built-in verdict keeps."""
    if verdict.ok:
        assert verdict.failure_class == "", verdict
    else:
        assert verdict.failure_class in task.failure_classes, verdict


def check_table(task: Task, table: dict[str, list[tuple[dict, object]]]) -> None:
    assert set(table) == set(task.failure_classes)
    for failure_class, cases in table.items():
        assert cases, failure_class
        for example, completion in cases:
            verdict = task.verify(example, completion)  # type: ignore[arg-type]  # non-text on purpose
            assert not verdict.ok and verdict.failure_class == failure_class, (failure_class, completion, verdict)


def test_vocabularies_are_documented_one_liners():
    doc = (Path(__file__).parents[1] / "docs" / "failure-classes.md").read_text()
    for task in (AdditionTask(), CountdownTask(n_train=0, n_test=0), FunctionCallingTask(), MathTask(),
                 BFCLTask(path=str(BFCL_FIXTURE))):
        assert task.failure_classes, task.name
        for name, meaning in task.failure_classes.items():
            assert name and " " not in name and meaning and "\n" not in meaning
            assert f"`{name}`" in doc, (task.name, name)


def test_a_user_task_is_unclassified_by_default():
    class Mine(Task):
        name = "mine"

        def load_examples(self, split="train", n=None, seed=0):
            return []

        def prompt(self, example):
            return ""

        def verify(self, example, completion):
            return Verdict(False, "no")

    assert Mine.failure_classes == {} and Mine().verify({}, "").failure_class == ""


# ------------------------------------------------------------------------ addition
ADD = {"a": 12, "b": 30}


def test_addition_classes():
    check_table(AdditionTask(), {
        "no_answer": [(ADD, "42"), (ADD, "<answer></answer>"), (ADD, "<answer>42"), (ADD, 42)],
        "not_an_integer": [(ADD, "<answer>forty-two</answer>"), (ADD, "<answer>4.2</answer>"),
                           (ADD, "<answer>40 + 2</answer>"), (ADD, "<answer>" + "1" * 25 + "</answer>")],
        "wrong_sum": [(ADD, "<answer>41</answer>"), (ADD, "<answer>-42</answer>")],
        "invalid_example": [({"a": "x", "b": 1}, "<answer>1</answer>"), ({}, "<answer>1</answer>")],
    })
    assert AdditionTask().verify(ADD, "<answer>42</answer>") == Verdict(True, "correct", "")


# ----------------------------------------------------------------------- countdown
CD = {"nums": [1, 7, 25], "target": 32}
ZERO = {"nums": [3, 3, 5], "target": 5}


def test_countdown_classes():
    def a(text: str) -> str:
        return f"<answer>{text}</answer>"

    check_table(CountdownTask(n_train=0, n_test=0), {
        "no_answer": [(CD, "25 + 7 * 1"), (CD, "<answer>25 + 7 * 1"), (CD, "</answer>"), (CD, a(" ")), (CD, None)],
        "not_an_expression": [(CD, a("twenty-five plus seven")), (CD, a("25 + 7.0 * 1")), (CD, a("(25 + 7 * 1")),
                              (CD, a("25 7 1")), (CD, a("25 + 7 * 1 = 32 = 32")), (CD, a("1" * 1001)),
                              (CD, a("25 + 7 @ 1"))],
        "disallowed_operator": [(CD, a("25 + 7 ** 1")), (CD, a("25 + 7 // 1")), (CD, a("25 + 7 % 1")),
                                (CD, a("25 + 7 ^ 1")), (CD, a("-1 + 25 + 7"))],
        "numbers_not_used_once": [(CD, a("25 + 7")), (CD, a("25 + 7 * 1 * 1")), (CD, a("25 + 8 - 1"))],
        "division_by_zero": [(ZERO, a("5 / (3 - 3)"))],
        "wrong_value": [(CD, a("25 + 7 + 1")), (CD, a("25 + 7 * 1 = 40")), (CD, a("25 / 7 + 1"))],
    })
    assert CountdownTask(n_train=0, n_test=0).verify(CD, "<answer>25 + 7 * 1</answer>").failure_class == ""


# ------------------------------------------------------------------ function calling
FC_ROW = {
    "query": "Weather and time in Paris?",
    "tools": [{"name": "get_weather", "parameters": {"city": {"type": "str"}, "unit": {"type": "str, optional"}}},
              {"name": "get_time", "parameters": {"city": {"type": "str"}}}],
}
ONE = normalize_example({**FC_ROW, "answers": [{"name": "get_weather", "arguments": {"city": "Paris"}}]})
TWO = normalize_example({**FC_ROW, "answers": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                               {"name": "get_time", "arguments": {"city": "Paris"}}]})
WITH_UNIT = normalize_example({**FC_ROW, "answers": [{"name": "get_weather",
                                                      "arguments": {"city": "Paris", "unit": "C"}}]})
W, T = '{"name": "get_weather", "arguments": %s}', '{"name": "get_time", "arguments": %s}'
PARIS, ROME, LOWER = '{"city": "Paris"}', '{"city": "Rome"}', '{"city": "paris"}'
PARIS_C, ROME_C = '{"city": "Paris", "unit": "C"}', '{"city": "Rome", "unit": "C"}'


def test_function_calling_classes():
    check_table(FunctionCallingTask(), {
        "unparseable_call": [(ONE, '<tool_call>{"name": </tool_call>'), (ONE, '[{"arguments": {}}]'),
                             (ONE, '[{"name": "get_weather", "arguments": [1]}]')],
        "no_call": [(ONE, "I cannot help with that."), (ONE, "[]"), (TWO, "")],
        "unknown_function": [(ONE, '[{"name": "book_flight", "arguments": {}}]'),
                             (TWO, f'[{W % PARIS}, {{"name": "get_news", "arguments": {{}}}}]')],
        "wrong_function": [(ONE, f"[{T % PARIS}]"), (TWO, f"[{T % PARIS}, {T % PARIS}]")],
        "missing_call": [(TWO, f"[{W % PARIS}]"), (TWO, f"[{T % PARIS}]")],
        "extra_call": [(ONE, f"[{W % PARIS}, {W % PARIS}]"), (ONE, f"[{W % PARIS}, {T % PARIS}]")],
        "missing_argument": [(WITH_UNIT, f"[{W % PARIS}]"), (WITH_UNIT, f"[{W % '{}'}]"),
                             # an argument missing outranks a wrong value next to it
                             (WITH_UNIT, f"[{W % ROME}]")],
        "unexpected_argument": [(ONE, f"[{W % PARIS_C}]"),
                                (ONE, f"[{W % ROME_C}]")],
        "wrong_argument_value": [(ONE, f"[{W % ROME}]"), (ONE, f"[{W % LOWER}]"),
                                 (TWO, f"[{W % PARIS}, {T % ROME}]")],
    })
    task = FunctionCallingTask()
    assert task.verify(TWO, f"[{T % PARIS}, {W % PARIS}]") == Verdict(True, "all 2 call(s) match", "")


def test_function_calling_reason_sentences_are_unchanged():
    task = FunctionCallingTask()
    assert task.verify(ONE, f"[{T % PARIS}]").reason == (
        "missing call get_weather(city='Paris'); extra call get_time(city='Paris')")
    assert task.verify(ONE, "no").reason == "no tool calls found; missing call get_weather(city='Paris')"


def test_unknown_function_needs_the_offered_tools():
    """An example without tools cannot tell an unknown function from a wrong one."""
    bare = {"answers": ONE["answers"]}
    assert FunctionCallingTask().verify(bare, '[{"name": "book_flight", "arguments": {}}]').failure_class == (
        "wrong_function")


# ----------------------------------------------------------------------------- math
MATH = {"question": "What is 3 * 6?", "answer": "18"}


@pytest.fixture(scope="module")
def math_task():
    return MathTask()


def test_math_classes(math_task):
    check_table(math_task, {
        "no_final_answer": [(MATH, ""), (MATH, "   "), (MATH, "\\boxed{}"), (MATH, "so \\boxed{18"),
                            (MATH, "I do not know."), (MATH, None)],
        "wrong_answer": [(MATH, "\\boxed{17}"), (MATH, "The answer is 19.")],
        "unverifiable": [(MATH, "\\boxed{2^{10000}}"), (MATH, "\\boxed{9^{9^{9}}}")],
    })
    assert math_task.verify(MATH, "3 * 6 = 18, so \\boxed{18}").failure_class == ""


def test_math_grader_timeouts_are_unverifiable():
    from r3rl.tasks.math_grade import MathGrader

    grader = MathGrader(timeout_s=5.0)
    try:
        assert grader.grade("18", "1" * 3000).failure_class == "unverifiable"  # over the text limit
        assert grader.grade("18", "\\boxed{18}") == Verdict(True, "answer 18 equals the reference 18", "")
    finally:
        grader.close()


# ----------------------------------------------------------------------------- bfcl
def _fn(schema: dict) -> dict:
    return {"name": "f", "parameters": {"type": "dict", "properties": {"p": schema}, "required": []}}


def _one(schema: dict, possible: list, value) -> Verdict:
    """check_calls on one function with one parameter p, its possible values and the model's value."""
    return check_calls("simple", [_fn(schema)], [{"f": {"p": possible}}], [ToolCall("f", {"p": value})])


STRING, INT = {"type": "string"}, {"type": "integer"}
INTS, DICT, DICTS = {"type": "array", "items": INT}, {"type": "dict"}, {"type": "array", "items": {"type": "dict"}}
REQ = {"name": "f", "parameters": {"type": "dict", "properties": {"s": STRING, "o": STRING}, "required": ["s"]}}
REQ_ANSWER = {"f": {"s": ["a"], "o": ["x"]}}


def bfcl_checker_cases() -> dict[str, list[Verdict]]:
    call = lambda **kw: ToolCall("f", kw)  # noqa: E731
    two = [{"f": {"p": ["a"]}}, {"f": {"p": ["b"]}}]
    return {
        "simple_function_checker:wrong_count": [check_calls("simple", [REQ], [REQ_ANSWER], [])],
        "multiple_function_checker:wrong_count": [check_calls("multiple", [REQ], [REQ_ANSWER], [])],
        "parallel_function_checker_no_order:wrong_count": [check_calls("parallel", [_fn(STRING)], two, [call(p="a")])],
        "parallel_function_checker_no_order:cannot_find_match": [
            check_calls("parallel", [_fn(STRING)], two, [call(p="a"), call(p="c")])],
        "simple_function_checker:wrong_func_name": [
            check_calls("simple", [REQ], [REQ_ANSWER], [ToolCall("g", {"s": "a", "o": "x"})])],
        "simple_function_checker:missing_required": [check_calls("simple", [REQ], [REQ_ANSWER], [call(o="x")])],
        "simple_function_checker:unexpected_param": [
            check_calls("simple", [REQ], [REQ_ANSWER], [call(s="a", o="x", z=1)])],
        "simple_function_checker:missing_optional": [check_calls("simple", [REQ], [REQ_ANSWER], [call(s="a")])],
        "type_error:simple": [_one(STRING, ["a"], 1), _one(INT, [1], "1")],
        "type_error:nested": [_one(INTS, [[1, 2]], [1, "x"])],
        "value_error:string": [_one(STRING, ["a", ""], "b")],
        "value_error:list/tuple": [_one(INTS, [[1, 2]], [2, 1])],
        "value_error:dict_key": [_one(DICT, [{"k": ["v"]}], {"z": "v"}), _one(DICT, [{"k": ["v"], "m": [1]}], {"k": "v"})],
        "value_error:dict_value": [_one(DICT, [{"k": ["v"]}], {"k": "w"})],
        "value_error:list_dict_count": [_one(DICTS, [[{"k": ["v"]}]], [{"k": "v"}, {"k": "v"}])],
        "value_error:others": [_one(INT, [1], 2), _one({"type": "boolean"}, [True], False)],
        "dict_checker:unclear": [_one(DICT, [""], {"k": "v"})],
    }


def test_bfcl_classes_are_bfcls_error_types():
    task = BFCLTask(path=str(BFCL_FIXTURE))
    assert task.failure_classes is ERROR_TYPES
    cases = bfcl_checker_cases()
    rows = {ex["id"]: ex for ex in task.load_examples("test")}
    cases["ast_decoder:decoder_failed"] = [task.verify(rows["simple_python_0"], "[f(x=__import__('os'))]"),
                                           task.verify(rows["simple_python_0"], '<tool_call>{"name": </tool_call>')]
    # BFCL keeps list_dict_checker:unclear as the result when a list-of-dicts parameter has no possible
    # answer at all; the type check rejects such a value first, so only the inner checker reaches it.
    with pytest.raises(_Mismatch) as caught:
        _check_list_of_dicts("p", [{"k": "v"}], [])
    assert caught.value.error_type == "list_dict_checker:unclear"
    assert set(cases) | {"list_dict_checker:unclear"} == set(ERROR_TYPES)
    for error_type, verdicts in cases.items():
        for verdict in verdicts:
            assert not verdict.ok and verdict.failure_class == error_type, (error_type, verdict)
            assert verdict.reason.startswith(error_type + ": ")
    assert _one(STRING, ["a", ""], "A").failure_class == ""


# ---------------------------------------------------------- hostile input, every task
def _hostile_tasks() -> list[tuple[Task, list[dict], int]]:
    bfcl = BFCLTask(path=str(BFCL_FIXTURE))
    return [
        (AdditionTask(), [ADD, {"a": 99, "b": 1}], 600),
        (CountdownTask(n_train=0, n_test=0), [CD, ZERO], 600),
        (FunctionCallingTask(), [ONE, TWO, WITH_UNIT] + FunctionCallingTask().load_examples("train", 3), 600),
        (bfcl, bfcl.load_examples("test", 6, seed=1), 400),
        (MathTask(), [MATH], 60),  # each math case is a round trip to the grading worker
    ]


@pytest.mark.parametrize("index", range(5), ids=["addition", "countdown", "function_calling", "bfcl", "math"])
def test_hostile_failures_are_always_classified(index):
    task, examples, cases = _hostile_tasks()[index]
    seen: set[str] = set()
    for i in range(cases):
        example = examples[i % len(examples)]
        _, completion = hostile_case(7, i, example)
        verdict = task.verify(example, completion)
        assert_classified(task, verdict)
        seen.add(verdict.failure_class)
    assert len(seen - {""}) >= 2  # the hostile families reach more than one class
