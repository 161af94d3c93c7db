"""Countdown: the verifier's rules, hostile inputs, the generator, and loading from files."""

from __future__ import annotations

import json
import sys
import time

import pytest

from r3rl.tasks import load_task
from r3rl.tasks.countdown import CountdownTask, extract_answer
from r3rl.tasks.data import DataError
from r3rl.tasks.safe_arith import check_equation

# (25 - 5) * 4 + 3 = 83
EX = {"nums": [25, 5, 4, 3], "target": 83}
SLOW = 1.0  # seconds; every verify call must finish well inside this whatever the input


@pytest.fixture(scope="module")
def task() -> CountdownTask:
    return CountdownTask(n_train=200, n_test=50)


def timed_verify(task, example, completion):
    start = time.perf_counter()
    verdict = task.verify(example, completion)
    assert time.perf_counter() - start < SLOW
    assert len(verdict.reason) < 300, verdict.reason
    return verdict


# ------------------------------------------------------------- answer extraction
@pytest.mark.parametrize(
    ("completion", "ok", "reason"),
    [
        ("<answer>(25 - 5) * 4 + 3</answer>", True, "correct"),
        ("Let me think. 25-5=20, 20*4=80, 80+3=83.\n<answer> (25 - 5) * 4 + 3 </answer>", True, "correct"),
        ("<answer>\n(25 - 5)\n\t* 4 + 3\n</answer>", True, "correct"),
        # the last block counts, both ways round
        ("<answer>25 + 5</answer> no, better: <answer>(25 - 5) * 4 + 3</answer>", True, "correct"),
        ("<answer>(25 - 5) * 4 + 3</answer> or maybe <answer>25 + 5 + 4 + 3</answer>", False, "equals 37"),
        ("(25 - 5) * 4 + 3", False, "no <answer>...</answer> block"),
        ("<answer>(25 - 5) * 4 + 3", False, "never closed"),
        ("<answer>(25 - 5) * 4 + 3</answer> <answer>25", False, "never closed"),
        ("(25 - 5) * 4 + 3</answer>", False, "without a matching <answer>"),
        ("<answer>   </answer>", False, "empty <answer> block"),
        ("<ANSWER>(25 - 5) * 4 + 3</ANSWER>", False, "no <answer>"),  # tags are case-sensitive
    ],
)
def test_answer_extraction(task, completion, ok, reason):
    verdict = timed_verify(task, EX, completion)
    assert verdict.ok is ok, verdict
    assert reason in verdict.reason


# ------------------------------------------------------------------ equation rules
@pytest.mark.parametrize(
    ("nums", "target", "answer", "ok", "reason"),
    [
        ([25, 5, 4, 3], 83, "(25 - 5) * 4 + 3", True, "correct"),
        ([25, 5, 4, 3], 83, "3 + 4 * (25 - 5)", True, "correct"),  # any order of the numbers
        ([25, 5, 4, 3], 83, "(25 - 5) * 4 + 3 = 83", True, "correct"),  # documented trailing "= target"
        ([25, 5, 4, 3], 83, "(25-5)*4+3=83", True, "correct"),
        ([25, 5, 4, 3], 83, "(25 - 5) * 4 + 3 = 84", False, "the equation says the result is 84, but the target is 83"),
        ([25, 5, 4, 3], 83, "84 = (25 - 5) * 4 + 3", False, "the equation says the result is 84, but the target is 83"),
        ([25, 5, 4, 3], 83, "(25 - 5) * 4 + 3 = 83 = 83", False, "only one '=' is allowed"),
        ([25, 5, 4, 3], 83, "(25 - 5) * 4 + 3 == 83", False, "only one '=' is allowed"),
        ([25, 5, 4, 3], 83, "83 = (25 - 5) * 4 + 3", True, "correct"),  # target first
        ([25, 5, 4, 3], 83, "83=(25-5)*4+3", True, "correct"),
        ([4, 25, 5], 80, "80 = (25-5)*4", True, "correct"),  # the example
        ([25, 5, 4, 3], 83, "(25 - 5) * 4 + 3 =", False, "'=' needs the expression on one side and the target"),
        ([25, 5, 4, 3], 83, "= 83", False, "the expression is empty"),
        ([25, 5, 4, 3], 83, "(25 - 5) * 4 = 80 + 3", False, "one side of '=' must be the target number alone"),
        # exact arithmetic: 1/49*49 is 0.9999999999999999 in floating point
        ([1, 49, 49], 1, "1 / 49 * 49", True, "correct"),
        ([6, 4, 2], 3, "6 / 4 * 2", True, "correct"),
        ([7, 2], 3, "7 / 2", False, "equals 7/2 (= 3.5), not the target 3"),
        ([25, 5, 4, 3], 83, "25 + 5 + 4 + 3", False, "equals 37, not the target 83"),
        # the numbers: each exactly once
        ([3, 5], 8, "3 + 6", False, "6 is not one of the given numbers"),
        ([3, 5], 11, "3 + 3 + 5", False, "3 is used 2 times but given 1 time(s)"),
        ([3, 5], 3, "3", False, "not all numbers used (missing [5])"),
        ([3, 3, 5], 11, "3 + 3 + 5", True, "correct"),  # repeated given numbers are a multiset
        ([3, 3, 5], 8, "3 + 5", False, "missing [3]"),
        ([5, 3], 15, "(5)(3)", False, "implicit multiplication"),
        ([5, 3], 15, "5(3)", False, "implicit multiplication"),
        # forbidden operators
        ([5, 2, 58], 83, "5 ** 2 + 58", False, "powers (**) are not allowed"),
        ([5, 2, 58], 83, "5 ^ 2 + 58", False, "'^' is not allowed"),
        ([25, 5], 5, "25 // 5", False, "floor division (//) is not allowed"),
        ([26, 5], 1, "26 % 5", False, "modulo (%) is not allowed"),
        ([3, 5], 2, "-3 + 5", False, "unary minus is not allowed"),
        ([3, 5], 2, "5 - +3", False, "unary plus is not allowed"),
        ([3, 5], 8, "3 - -5", False, "unary minus is not allowed"),
        ([3, 5], 2, "5 - 3 + 0.0", False, "decimal numbers are not allowed"),
        ([3, 5], 8, "3.0 + 5", False, "decimal numbers are not allowed"),
        ([3, 5], 8, "3 + 5e0", False, "names, words"),
        ([3, 5], 8, "three + 5", False, "names, words"),
        ([3, 5], 8, "abs(3) + 5", False, "'abs'"),
        ([3, 5], 8, "(3).real + 5", False, "'real'"),
        ([3, 5], 8, "(lambda: 3)() + 5", False, "'lambda'"),
        ([3, 5], 8, "__import__('os').system('x')", False, "strings are not allowed"),
        ([3, 5], 8, "__import__(os)", False, "names, words"),
        ([3, 5], 8, "'3' + '5'", False, "strings are not allowed"),
        ([3, 5], 8, "[3] + [5]", False, "'[' is not allowed"),
        ([3, 5], 8, "3 + 5; 1", False, "';' is not allowed"),
        ([3, 5], 15, "3 × 5", False, "'×' is not allowed"),
        ([3, 5], 8, "\uff13 + 5", False, "is not allowed"),  # full-width digit three
        ([3, 5], 8, "3 + 5 #", False, "'#' is not allowed"),
        ([3, 5], 8, "1_0 + 5", False, "names, words"),
        # malformed
        ([3, 5], 8, "3 5", False, "two numbers stand next to each other with no operator between them"),
        ([3, 5], 8, "3 + 05", False, "numbers must not have leading zeros (found '05')"),
        ([3, 5], 8, "3 +", False, "'+' at the end has no number on its right"),
        ([3, 5], 8, "(3 + 5", False, "'(' not closed"),
        ([3, 5], 8, "3 + 5)", False, "')' without '('"),
        ([3, 5], 8, "()", False, "empty parentheses"),
        ([5, 3, 3], 5, "5 / (3 - 3)", False, "division by zero"),
        ([5, 0], 5, "5 / 0", False, "division by zero"),
    ],
)
def test_equation_rules(task, nums, target, answer, ok, reason):
    verdict = timed_verify(task, {"nums": nums, "target": target}, f"<answer>{answer}</answer>")
    assert verdict.ok is ok, verdict
    assert reason in verdict.reason, verdict


# ------------------------------------------------------------------ hostile inputs
HOSTILE = [
    ("9**9**9", "powers"),
    ("9^9^9^9", "'^'"),
    ("(" * 10_000 + "3 + 5" + ")" * 10_000, "too long"),
    ("(" * 101 + "3 + 5" + ")" * 101, "nested deeper than 100"),
    ("(" * 400 + "3 + 5", "nested deeper than 100"),
    ("1" * 31 + " + 5", "31 digits is too long"),
    ("1" * 100_000, "too long"),
    ("1+" * 500_000 + "1", "too long"),
    ("1+" * 499 + "1", "too many operators"),
    ("-" * 999 + "1", "unary minus is not allowed"),
    ("1" + "-" * 998 + "1", "unary minus is not allowed"),
    ("(((3)))" * 140, "implicit multiplication"),
    ("+".join(str(n) for n in range(2, 150)), "must be used exactly once"),
    ("__import__('os').system('echo pwned')", "strings are not allowed"),
    ("__builtins__.exec(input())", "names, words"),
    ("().__class__.__bases__[0].__subclasses__()", "names, words"),
    ("lambda: 0", "names, words"),
    ("'a' * 10**9", "strings are not allowed"),
    ("\x00" * 10, "'\\x00' is not allowed"),
    ("3 + 5\n\n" + "x" * 900, "names, words"),
]


@pytest.mark.parametrize(("answer", "reason"), HOSTILE)
def test_hostile_answers_fail_fast_without_raising(task, answer, reason):
    verdict = timed_verify(task, {"nums": [3, 5], "target": 8}, f"<answer>{answer}</answer>")
    assert verdict.ok is False
    assert reason in verdict.reason, verdict


@pytest.mark.parametrize(
    "completion",
    [
        "x" * 1_000_000,  # 1 MB, no tags
        "<answer>" * 200_000,  # ~1.6 MB of unclosed tags
        "</answer>" * 100_000,
        "<answer>(3 + 5)</answer>" * 50_000,  # 1 MB of valid-looking blocks
        "<answer>" + "9" * 1_000_000 + "</answer>",
    ],
)
def test_megabyte_completions(task, completion):
    verdict = timed_verify(task, {"nums": [3, 5], "target": 8}, completion)
    assert isinstance(verdict.ok, bool)


def test_megabyte_of_blocks_still_reads_the_last():
    task = CountdownTask(n_train=0, n_test=0)
    assert task.verify({"nums": [3, 5], "target": 8}, "<answer>3 + 5</answer>" * 50_000).ok


def test_long_flat_chain_is_evaluated_without_recursion():
    # 200 operators: an AST 200 levels deep, though no parenthesis is nested.
    answer = "+".join(["1"] * 201)
    assert check_equation(answer, [1] * 201, 201).ok
    assert not check_equation(answer, [1] * 201, 202).ok
    answer = "+".join(["1"] * 202)
    assert "too many operators (201, limit 200)" in check_equation(answer, [1] * 202, 202).reason


def test_deep_caller_stack_does_not_break_the_parser():
    def nest(depth):
        if depth:
            return nest(depth - 1)
        return check_equation("+".join(["1"] * 201), [1] * 201, 201)

    limit = sys.getrecursionlimit()
    verdict = nest(limit - 60)  # close to the limit: the parser may run out of stack
    assert isinstance(verdict.ok, bool)
    assert verdict.ok or "nests too deeply" in verdict.reason


def test_non_text_completion_is_a_failure(task):
    assert not task.verify(EX, None).ok  # type: ignore[arg-type]


def test_extract_answer_reports_why():
    assert extract_answer("a <answer> 1+2 </answer> b") == ("1+2", "")
    assert extract_answer("nothing")[0] is None


# ----------------------------------------------------------------------- generator
def test_generated_instances_are_solvable_and_in_range(task):
    examples = task.load_examples("train") + task.load_examples("test")
    assert len(examples) == 250
    for ex in examples:
        assert len(ex["nums"]) in (3, 4)
        assert all(1 <= n <= 99 for n in ex["nums"])
        assert 1 <= ex["target"] <= 1000
        # solvable by construction: the expression it was built from passes the verifier
        assert task.verify(ex, f"<answer>{ex['solution']}</answer>").ok, ex
    assert {len(ex["nums"]) for ex in examples} == {3, 4}


def test_generated_splits_are_disjoint_deterministic_and_stable():
    key = lambda ex: (tuple(sorted(ex["nums"])), ex["target"])  # noqa: E731
    a = CountdownTask(n_train=300, n_test=100, seed=3)
    train, test = a.load_examples("train"), a.load_examples("test")
    assert len(train) == 300 and len(test) == 100
    assert not {key(e) for e in train} & {key(e) for e in test}
    assert len({key(e) for e in train}) == 300  # no duplicates either
    assert CountdownTask(n_train=300, n_test=100, seed=3).load_examples("train") == train
    assert CountdownTask(n_train=300, n_test=100, seed=4).load_examples("train") != train
    # the test split does not move when the train split grows
    assert CountdownTask(n_train=600, n_test=100, seed=3).load_examples("test") == test
    assert len({a.example_id(e) for e in train + test}) == 400


def test_load_examples_samples_with_seed(task):
    five = task.load_examples("train", n=5, seed=1)
    assert len(five) == 5
    assert five == task.load_examples("train", n=5, seed=1)
    assert five != task.load_examples("train", n=5, seed=2)
    assert len(task.load_examples("test", n=10_000)) == 50
    with pytest.raises(ValueError, match="split must be"):
        task.load_examples("validation")


def test_num_range_option():
    task = load_task("countdown", n_train=50, n_test=0, num_range=(3, 3), seed=1)
    assert {len(ex["nums"]) for ex in task.load_examples("train")} == {3}
    task = load_task("countdown", n_train=50, n_test=0, num_range=[5, 5], max_target=100)
    assert {len(ex["nums"]) for ex in task.load_examples("train")} == {5}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_range": (4, 3)}, "num_range"),
        ({"num_range": (1, 2)}, "num_range"),
        ({"n_train": -1}, "n_train"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"test_path": "x.jsonl"}, "test_path needs path"),
        ({"max_target": 0}, "max_target"),
    ],
)
def test_bad_option_values(options, message):
    with pytest.raises(ValueError, match=message):
        load_task("countdown", **options)


def test_prompt_states_the_rules(task):
    text = task.prompt(EX)
    for needle in ("[25, 5, 4, 3]", "83", "exactly once", "+, -, *, /", "<answer>"):
        assert needle in text
    msgs = task.messages(EX)
    assert msgs[-1] == {"role": "user", "content": text}
    assert task.tools(EX) is None


# --------------------------------------------------------------------------- files
ROWS = [{"target": 10 + i, "nums": [i + 1, 9, 1 + (i % 3)]} for i in range(40)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_from_jsonl_with_heldout_split(tmp_path):
    path = _write_jsonl(tmp_path / "cd.jsonl", ROWS)
    task = load_task("countdown", path=str(path), test_fraction=0.25)
    train, test = task.load_examples("train"), task.load_examples("test")
    assert len(test) == 10 and len(train) == 30
    pairs = lambda xs: {(tuple(e["nums"]), e["target"]) for e in xs}  # noqa: E731
    assert pairs(train) | pairs(test) == pairs(ROWS)
    assert not pairs(train) & pairs(test)


def test_load_from_parquet_and_json_and_test_path(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "train.parquet")
    (tmp_path / "test.json").write_text(json.dumps({"data": [{"nums": [1, 2], "target": 3, "id": "t0"}]}))
    task = CountdownTask(path=str(tmp_path / "train.parquet"), test_path=str(tmp_path / "test.json"))
    assert len(task.load_examples("train")) == 40
    (only,) = task.load_examples("test")
    assert only == {"nums": [1, 2], "target": 3, "id": "t0"}
    assert task.verify(only, "<answer>1 + 2</answer>").ok


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ({"nums": [1, 2]}, "row 3 of .*: missing field 'target'"),
        ({"target": 3}, "row 3 of .*: missing field 'nums'"),
        ({"nums": "1 2", "target": 3}, "row 3 .*'nums' must be a non-empty list"),
        ({"nums": [], "target": 3}, "row 3 .*'nums' must be a non-empty list"),
        ({"nums": [1, -2], "target": 3}, "row 3 .*non-negative integers"),
        ({"nums": [1, True], "target": 3}, "row 3 .*non-negative integers"),
        ({"nums": [1, 2], "target": 2.5}, "row 3 .*'target' must be an integer"),
        ({"nums": [1, 2], "target": "3"}, "row 3 .*'target' must be an integer"),
    ],
)
def test_bad_rows_name_row_and_field(tmp_path, bad_row, message):
    path = _write_jsonl(tmp_path / "cd.jsonl", [ROWS[0], ROWS[1], bad_row])
    with pytest.raises(DataError, match=message):
        CountdownTask(path=str(path)).load_examples("train")


def test_integral_floats_are_accepted(tmp_path):
    path = _write_jsonl(tmp_path / "cd.jsonl", [{"nums": [1.0, 2], "target": 3.0}])
    (ex,) = CountdownTask(path=str(path), test_path=str(path)).load_examples("test")
    assert ex == {"nums": [1, 2], "target": 3} and type(ex["target"]) is int


# ------------------------------------------------- every failure reason is a plain sentence
# (answer over nums [25, 5, 4, 60], target 140) -> the whole reason, word for word. These are the
# texts a model reads with include_reason, so each is checked in full, not by a fragment.
PLAIN_REASONS = [
    ("05*4+60", "numbers must not have leading zeros (found '05'); write the given number as is"),
    ("25 5 * 4 + 60", "two numbers stand next to each other with no operator between them"),
    ("* 25 + 5 * 4 + 60", "'*' at the start has no number on its left"),
    ("(/ 25 + 5) * 4 + 60", "'/' after '(' has no number on its left"),
    ("25 * / 5 * 4 + 60", "'/' after '*' has no number on its left"),
    ("(25 + 5 *) * 4 + 60", "'*' before ')' has no number on its right"),
    ("25 + 5 * 4 + 60 -", "'-' at the end has no number on its right"),
    ("25 (5) * 4 + 60", "implicit multiplication like '2(3)' or '(2)(3)' is not allowed; write '*' between them"),
    ("(25)(5) * 4 + 60", "implicit multiplication like '2(3)' or '(2)(3)' is not allowed; write '*' between them"),
    ("(25) 5 * 4 + 60", "implicit multiplication like '2(3)' or '(2)(3)' is not allowed; write '*' between them"),
    ("25 + 5 * 4 + 60 + ()", "empty parentheses '()' are not allowed"),
    ("(25 + 5 * 4 + 60", "unbalanced parentheses: '(' not closed"),
    ("25 + 5 * 4 + 60)", "unbalanced parentheses: ')' without '('"),
    ("-25 + 5 * 4 + 60", "unary minus is not allowed; use only binary + - * / on the given numbers"),
    ("25 + 5 * 4 + 60 = 140 = 140",
     "only one '=' is allowed, with the target number alone on one side (as in '(25 - 5) * 4 = 80')"),
    ("25 + 5 * 4 + 60 =", "'=' needs the expression on one side and the target number on the other"),
    ("25 + 5 = 4 + 60", "one side of '=' must be the target number alone, as in '(25 - 5) * 4 = 80'; "
                        "got '25 + 5' = '4 + 60'"),
    ("141 = 25 + 5 * 4 + 60", "the equation says the result is 141, but the target is 140"),
    ("25 + 5 * 4 + 61", "each given number [4, 5, 25, 60] must be used exactly once: 61 is not one of the given "
                        "numbers; not all numbers used (missing [60])"),
    ("25 * 5 + 4 + 60", "the expression equals 189, not the target 140"),
    ("25 / 5 / 4 + 60", "the expression equals 245/4 (= 61.25), not the target 140"),
    ("25 / (5 - 5) + 4 + 60", "each given number [4, 5, 25, 60] must be used exactly once: 5 is used 2 times but "
                              "given 1 time(s)"),
    ("60 / (25 - 25) + 4 + 5", "each given number [4, 5, 25, 60] must be used exactly once: 25 is used 2 times but "
                               "given 1 time(s)"),
    ("25 ** 5", "powers (**) are not allowed"),
    ("25 + 5 * 4 + 60.0", "decimal numbers are not allowed; use the given integers"),
]
PYTHON_INTERNALS = ("syntax", "octal", "0o", "Perhaps", "literal", "Error", "Traceback", "<unknown>", "token",
                    "line 1", "BinOp", "Constant", "Tuple", "Call(")


@pytest.mark.parametrize(("answer", "reason"), PLAIN_REASONS)
def test_failure_reasons_are_plain_sentences(task, answer, reason):
    verdict = timed_verify(task, {"nums": [25, 5, 4, 60], "target": 140}, f"<answer>{answer}</answer>")
    assert not verdict.ok
    assert verdict.reason == reason


def test_no_python_message_reaches_a_reason(task):
    """Every malformed expression over a small alphabet (all strings up to 5 symbols) gets one of our sentences."""
    import itertools

    alphabet = ["1", "05", "2", "+", "*", "/", "(", ")", " ", "="]
    seen = set()
    for n in range(1, 6):
        for parts in itertools.product(alphabet, repeat=n):
            verdict = task.verify({"nums": [1, 2], "target": 3}, "<answer>" + "".join(parts) + "</answer>")
            if not verdict.ok:
                seen.add(verdict.reason.split(" (")[0].split(":")[0])
                assert not any(word in verdict.reason for word in PYTHON_INTERNALS), ("".join(parts), verdict.reason)
    assert len(seen) > 10  # the alphabet reaches many different reasons, not one catch-all
