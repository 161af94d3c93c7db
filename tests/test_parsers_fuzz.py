"""Property tests of both verifiers: never raise, always fast, and agree with an independent oracle.

The example count is kept small so the suite stays fast; for a deeper search run
`R3RL_FUZZ_EXAMPLES=5000 pytest tests/test_parsers_fuzz.py`.
"""

from __future__ import annotations

import json
import keyword
import os
import random
import time
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r3rl.tasks.countdown import CountdownTask
from r3rl.tasks.fc_parse import ToolCall, parse_tool_calls
from r3rl.tasks.function_calling import FunctionCallingTask
from r3rl.types import Verdict

FUZZ = settings(max_examples=int(os.environ.get("R3RL_FUZZ_EXAMPLES", "60")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BUDGET = 1.0  # seconds per verify call, whatever the input
MAX_REASON_CHARS = 1200  # reasons are logged and may be shown to the model: one bounded paragraph

COUNTDOWN = CountdownTask(n_train=0, n_test=0)
FC = FunctionCallingTask()


def verify_timed(task, example, text) -> Verdict:
    start = time.perf_counter()
    verdict = task.verify(example, text)
    assert time.perf_counter() - start < BUDGET
    assert isinstance(verdict, Verdict) and isinstance(verdict.ok, bool) and isinstance(verdict.reason, str)
    assert len(verdict.reason) <= MAX_REASON_CHARS, verdict.reason
    # A built-in failure always names a class of its task's vocabulary; a pass names none.
    assert verdict.failure_class == "" if verdict.ok else verdict.failure_class in task.failure_classes, verdict
    return verdict


# ----------------------------------------------------------------------- countdown
TOKENS = st.sampled_from(
    ["1", "7", "25", "100", "0", "+", "-", "*", "/", "**", "//", "%", "^", "(", ")", " ", "=", ".", "e",
     "<answer>", "</answer>", "x", "lambda", "'", "\n", "9" * 40, "(" * 60, ")" * 60, "__import__"]
)


@FUZZ
@given(st.text(max_size=300))
def test_countdown_arbitrary_text(text):
    verify_timed(COUNTDOWN, {"nums": [1, 7, 25], "target": 32}, text)
    verify_timed(COUNTDOWN, {"nums": [1, 7, 25], "target": 32}, f"<answer>{text}</answer>")


@FUZZ
@given(st.lists(TOKENS, max_size=80))
def test_countdown_token_soup(tokens):
    verify_timed(COUNTDOWN, {"nums": [1, 7, 25], "target": 32}, "<answer>" + "".join(tokens) + "</answer>")


def expressions(max_leaves: int = 6):
    """(text, exact value or None on division by zero, numbers used) for random + - * / trees."""
    leaf = st.integers(0, 120).map(lambda n: (str(n), Fraction(n), [n]))

    def combine(children):
        return st.tuples(st.sampled_from("+-*/"), children, children).map(_apply)

    return st.recursive(leaf, combine, max_leaves=max_leaves)


def _apply(node):
    op, (ltxt, lval, lnums), (rtxt, rval, rnums) = node
    if lval is None or rval is None or (op == "/" and rval == 0):
        value = None
    else:
        value = {"+": lval + rval, "-": lval - rval, "*": lval * rval}.get(op) if op != "/" else lval / rval
    return f"({ltxt}) {op} ({rtxt})", value, lnums + rnums


@FUZZ
@given(expressions(), st.integers(-5, 5), st.randoms(use_true_random=False), st.booleans())
def test_countdown_agrees_with_exact_oracle(expr, offset, rnd, claim):
    text, value, nums = expr
    shuffled = list(nums)
    rnd.shuffle(shuffled)
    target = int(value) + offset if value is not None and value.denominator == 1 else 24
    answer = f"{text} = {target}" if claim and target >= 0 else text  # "= N" takes a plain integer
    verdict = verify_timed(COUNTDOWN, {"nums": shuffled, "target": target}, f"<answer>{answer}</answer>")
    if value is None:
        assert not verdict.ok and "division by zero" in verdict.reason
    else:
        assert verdict.ok is (value == target), (answer, value, verdict)


@FUZZ
@given(expressions(), st.lists(st.tuples(st.integers(0, 200), st.sampled_from(list("()+-*/ 1^.%=x"))), max_size=5))
def test_countdown_mutated_expressions(expr, edits):
    text, _, nums = expr
    chars = list(text)
    for pos, ch in edits:
        chars.insert(pos % (len(chars) + 1), ch)
    verify_timed(COUNTDOWN, {"nums": nums, "target": 10}, "<answer>" + "".join(chars) + "</answer>")


@FUZZ
@given(expressions(max_leaves=4), st.integers(0, 3))
def test_countdown_wrong_multiset_never_passes(expr, which):
    text, value, nums = expr
    if value is None or value.denominator != 1:
        return
    changed = list(nums)
    changed[which % len(changed)] += 1  # the expression no longer uses exactly the given numbers
    verdict = verify_timed(COUNTDOWN, {"nums": changed, "target": int(value)}, f"<answer>{text}</answer>")
    assert not verdict.ok and "exactly once" in verdict.reason


# ------------------------------------------------------------------ function calls
# Kept small: generating nested JSON dominates these tests' time, not the code under test.
KEYS = st.text(max_size=6)
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=5,
)
NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)
CALLS = st.lists(st.tuples(NAMES, st.dictionaries(KEYS, JSON_VALUES, max_size=3)), max_size=3)


def render(calls, style):
    objs = [{"name": n, "arguments": a} for n, a in calls]
    if style == "list":
        return json.dumps(objs)
    if style == "tags":
        return "".join(f"<tool_call>\n{json.dumps(o)}\n</tool_call>\n" for o in objs)
    if style == "fence":
        return "Here:\n```json\n" + json.dumps(objs) + "\n```"
    if style == "openai":
        return json.dumps({"tool_calls": [{"type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                                          for n, a in calls]})
    if style == "jsonl":
        return "\n".join(json.dumps(o) for o in objs)
    if style == "mistral":
        return "[TOOL_CALLS] " + json.dumps(objs)
    if style == "python" and all(not keyword.iskeyword(n) for n, _ in calls) and all(
            k.isidentifier() and not keyword.iskeyword(k) for _, a in calls for k in a):
        # a call named `if` or an argument named `for` cannot be written in Python syntax
        # Python call syntax (argument names must be identifiers); repr of a JSON value is a Python literal
        return "[" + ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for n, a in calls) + "]"
    return "Sure. " + " then ".join(json.dumps(o) for o in objs) + " Done."  # prose


STYLES = st.sampled_from(["list", "tags", "fence", "openai", "prose", "jsonl", "mistral", "python"])


@FUZZ
@given(st.text(max_size=400))
def test_tool_calls_arbitrary_text(text):
    parse_tool_calls(text)
    verify_timed(FC, {"query": "q", "tools": [], "answers": [{"name": "f", "arguments": {"x": 1}}]}, text)


@FUZZ
@given(JSON_VALUES, st.sampled_from(["{}", "<tool_call>{}</tool_call>", "```json\n{}\n```", "text {} text"]))
def test_tool_calls_arbitrary_json(value, wrapper):
    text = wrapper.replace("{}", json.dumps(value))
    verify_timed(FC, {"query": "q", "tools": [], "answers": [{"name": "f", "arguments": {}}]}, text)


@FUZZ
@given(CALLS, STYLES, st.randoms(use_true_random=False))
def test_rendered_calls_round_trip_and_verify_in_any_order(calls, style, rnd):
    if style == "prose" and not calls:
        return
    parsed = parse_tool_calls(render(calls, style))
    assert parsed.ok, parsed.error
    assert parsed.calls == tuple(ToolCall(n, a) for n, a in calls)
    example = {"query": "q", "tools": [], "answers": [{"name": n, "arguments": a} for n, a in calls]}
    shuffled = list(calls)
    rnd.shuffle(shuffled)
    assert verify_timed(FC, example, render(shuffled, style)).ok


@FUZZ
@given(CALLS.filter(bool), STYLES, st.integers(0, 10**6), st.sampled_from(["drop", "extra", "rename", "arg"]))
def test_changed_calls_never_pass(calls, style, where, change):
    example = {"query": "q", "tools": [], "answers": [{"name": n, "arguments": a} for n, a in calls]}
    got = list(calls)
    i = where % len(got)
    name, args = got[i]
    if change == "drop":
        del got[i]
    elif change == "extra":
        got.append((name, args))
    elif change == "rename":
        got[i] = (name + "X", args)
    else:
        got[i] = (name, {**args, "__added__": True})
    if style == "prose" and not got:
        style = "list"
    assert not verify_timed(FC, example, render(got, style)).ok


@FUZZ
@given(CALLS, STYLES, st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(list('{}[]",:\\ ') + ["<tool_call>",
                                                                                                  "```"])), max_size=6))
def test_mutated_calls_never_raise(calls, style, edits):
    chars = list(render(calls, style))
    for pos, ch in edits:
        chars.insert(pos % (len(chars) + 1), ch)
    example = {"query": "q", "tools": [], "answers": [{"name": n, "arguments": a} for n, a in calls]}
    verify_timed(FC, example, "".join(chars))


def test_random_bracket_storms_are_fast():
    rnd = random.Random(0)
    for _ in range(5):
        text = "".join(rnd.choices('[{]}"\\ ,:a1', k=50_000))
        verify_timed(FC, {"query": "q", "tools": [], "answers": []}, text)
