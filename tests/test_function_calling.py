"""Function calling: the tool-call parser, exact-match verification, tool normalisation, data."""

from __future__ import annotations

import json
import time

import pytest

from r3rl.demo import tiny
from r3rl.environment import prompts
from r3rl.tasks import load_task
from r3rl.tasks.data import DataError
from r3rl.tasks.fc_parse import MAX_JSON_DEPTH, ToolCall, parse_tool_calls, values_equal
from r3rl.tasks.fc_sample import SAMPLE
from r3rl.tasks.function_calling import FunctionCallingTask, normalize_example, normalize_tool, normalize_tools


@pytest.fixture(scope="module")
def task() -> FunctionCallingTask:
    return FunctionCallingTask()


W = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
F = {"name": "get_forecast", "arguments": {"city": "Tokyo", "days": 7}}
EX = {"query": "Weather in Paris (celsius) and a 7-day forecast for Tokyo?", "tools": "[]",
      "answers": json.dumps([W, F])}


def calls(*pairs):
    return tuple(ToolCall(name, args) for name, args in pairs)


# --------------------------------------------------------------------------- parser
PARSE_OK = [
    ('[{"name": "f", "arguments": {"x": 1}}]', calls(("f", {"x": 1}))),
    ('{"name": "f", "arguments": {"x": 1}}', calls(("f", {"x": 1}))),
    ('  \n[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"y": [1, 2]}}]\n',
     calls(("f", {}), ("g", {"y": [1, 2]}))),
    ('```json\n[{"name": "f", "arguments": {"x": 1}}]\n```', calls(("f", {"x": 1}))),
    ('Calling:\n```\n{"name": "f", "arguments": {"x": 1}}\n```\nand\n```json\n{"name": "g", "arguments": {}}\n```',
     calls(("f", {"x": 1}), ("g", {}))),
    ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>', calls(("f", {"x": 1}))),
    ('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>\n<tool_call>{"name": "g", "arguments": {}}'
     '</tool_call>', calls(("f", {"x": 1}), ("g", {}))),
    ('<tool_call>{"name": "f", "arguments": {"x": 1}}', calls(("f", {"x": 1}))),  # cut off at the stop token
    ('<tool_call>\n```json\n{"name": "f", "arguments": {}}\n```\n</tool_call>', calls(("f", {}))),
    ('<tool_call>[{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}]</tool_call>',
     calls(("f", {}), ("g", {}))),
    ('{"tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\\"x\\": 1}"}}]}',
     calls(("f", {"x": 1}))),
    ('{"role": "assistant", "content": null, "tool_calls": null}', ()),
    ('{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}', calls(("f", {"x": 1}))),
    ('[{"name": "f", "arguments": "{\\"x\\": [1, {\\"y\\": true}]}"}]', calls(("f", {"x": [1, {"y": True}]}))),
    ('{"name": "f", "parameters": {"x": 1}}', calls(("f", {"x": 1}))),  # Llama 3.1 style
    ('{"name": "f"}', calls(("f", {}))),
    ('{"name": "f", "arguments": null}', calls(("f", {}))),
    ('{"name": "f", "arguments": ""}', calls(("f", {}))),
    ("[]", ()),
    ("I cannot help with that.", ()),
    ('Sure! Here you go: [{"name": "f", "arguments": {"x": 1}}] Hope that helps.', calls(("f", {"x": 1}))),
    ('Thinking {"not": "a call"} ... {"name": "f", "arguments": {}} and {"name": "g", "arguments": {}}',
     calls(("f", {}), ("g", {}))),
    ('<think>maybe {"name": "g", "arguments": {}}?</think>\n[{"name": "f", "arguments": {}}]', calls(("f", {}))),
    ('<think>use <tool_call>{"name": "g"}</tool_call></think><tool_call>{"name": "f"}</tool_call>', calls(("f", {}))),
    ('{"name": "f", "arguments": {"s": "brackets ]]}} in a string", "n": -1.5e3}}',
     calls(("f", {"s": "brackets ]]}} in a string", "n": -1500.0}))),
    # JSON Lines, and the separators models put between bare objects
    ('{"name": "f", "arguments": {"x": 1}}\n{"name": "g", "arguments": {}}\n', calls(("f", {"x": 1}), ("g", {}))),
    ('{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}', calls(("f", {}), ("g", {}))),
    ('<tool_call>\n{"name": "f", "arguments": {}}\n{"name": "g", "arguments": {}}\n</tool_call>',
     calls(("f", {}), ("g", {}))),
    # Llama 3.1 / 3.2
    ('<|python_tag|>{"name": "f", "parameters": {"x": 1}}<|eom_id|>', calls(("f", {"x": 1}))),
    ('<|python_tag|>{"name": "f", "parameters": {}}; {"name": "g", "parameters": {"y": "z"}}',
     calls(("f", {}), ("g", {"y": "z"}))),
    ('<|python_tag|>brave_search.call(query="weather Paris")', calls(("brave_search.call", {"query": "weather Paris"}))),
    # Mistral, old and new tokenizers
    ('[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]</s>',
     calls(("f", {"x": 1}), ("g", {}))),
    ('[TOOL_CALLS]f[ARGS]{"x": 1}[TOOL_CALLS]g[CALL_ID]a1b2c3d4e[ARGS]{}', calls(("f", {"x": 1}), ("g", {}))),
    ('[TOOL_CALLS]f[ARGS]', calls(("f", {}))),
    # Python call syntax (BFCL prompting mode): literals only, tuples read as lists, JSON names accepted
    ("[get_weather(city='Paris', days=2), math.factorial(number=5)]",
     calls(("get_weather", {"city": "Paris", "days": 2}), ("math.factorial", {"number": 5}))),
    ("f(a=-1.5, b=(1, 2), c={'k': [None, True]}, d=true, e=null, f=+3)",
     calls(("f", {"a": -1.5, "b": [1, 2], "c": {"k": [None, True]}, "d": True, "e": None, "f": 3}))),
    ("[f()]", calls(("f", {}))),
    ('[f(s="brackets ]) in a string", t=\'it\\\'s\')]', calls(("f", {"s": "brackets ]) in a string", "t": "it's"}))),
    ("Sure, here you go: [f(x=1), g(y='a')] Hope that helps.", calls(("f", {"x": 1}), ("g", {"y": "a"}))),
    ("```python\n[f(x=1)]\n```", calls(("f", {"x": 1}))),
    ("<tool_call>[f(x=1)]</tool_call>", calls(("f", {"x": 1}))),
    ("I would call get_weather(city) here, but [no] [tool (fits).", ()),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_OK)
def test_parse_formats(text, expected):
    parsed = parse_tool_calls(text)
    assert parsed.ok, parsed.error
    assert parsed.calls == expected


PARSE_ERRORS = [
    ("<tool_call>{bad json}</tool_call>", "<tool_call> block #1: invalid JSON"),
    ("<tool_call></tool_call>", "<tool_call> block #1 is empty"),
    ('<tool_call>{"name": "f"}</tool_call><tool_call>{"arguments": {}}</tool_call>', "block #2 has no 'name'"),
    ("```json\n[{\"name\": \"f\",]\n```", "code block #1: invalid JSON"),
    ('[{"name": "f", "arguments": [1, 2]}]', "arguments of f are list, expected an object"),
    ('[{"name": "f", "arguments": "{not json"}]', "arguments of f: invalid JSON"),
    ('[{"name": "f", "arguments": "[1]"}]', "arguments of f are list"),
    ('[{"name": 3, "arguments": {}}]', "call #1 of the answer has no 'name'"),
    ('["f"]', "call #1 of the answer is str"),
    ('{"name": "f", "arguments": {"x": NaN}}', "NaN is not valid JSON"),
    ('{"name": "f", "arguments": {"x": Infinity}}', "Infinity is not valid JSON"),
    ('{"name": "f", "arguments": {"x": ' + "9" * 5000 + "}}", "invalid JSON"),  # int() digit limit
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper than"),
    ('{"name": "f", "arguments": "' + "[" * 10_000 + '"}', "arguments of f: JSON nested deeper than"),
    ("x" * 100_001, "answer too long (100001 characters"),
    ('{"name": "f"}\n{"name": "g"} trailing prose}', "the answer: invalid JSON"),
    ("{}" * 200, "more than 128 JSON values"),
    ("[TOOL_CALLS][ARGS]{}", "[TOOL_CALLS] block #1 has no function name"),
    ('[TOOL_CALLS]f[ARGS]{"x": 1} {"y": 2}', "arguments of f must be one JSON object"),
    ("[TOOL_CALLS]f[ARGS][1]", "arguments of f must be one JSON object"),
    ("[f(x=__import__('os').system('echo hi'))]", "argument 'x' of f is a function call, not a literal value"),
    ("[f(x=os.environ)]", "argument 'x' of f is an attribute, not a literal value"),
    ("[f(x=y)]", "argument 'x' of f is the variable name 'y', not a literal value"),
    ("[f(x=1 + 2)]", "argument 'x' of f is an arithmetic expression"),
    ("[f(x=f'{y}')]", "argument 'x' of f is an f-string"),
    ("[f(x=lambda: 1)]", "argument 'x' of f is a lambda"),
    ("[f(x=[i for i in range(9)])]", "argument 'x' of f is a comprehension"),
    ("[f(x=b'raw')]", "argument 'x' of f is a bytes literal"),
    ("[f(x={1: 2})]", "argument 'x' of f has a dict key that is not a string"),
    ("[f(x=1e999)]", "argument 'x' of f is not a finite number"),
    ("[f(x=" + "9" * 30 + ")]", "argument 'x' of f is an integer too large"),
    ("[f(x=" + "9" * 5000 + ")]", "a number in the call list has too many digits"),
    ("[f(x=" + "[" * 70 + "]" * 70 + ")]", "argument 'x' of f nests lists or dicts deeper than 64"),
    ("[f(x=" + "-" * 10_000 + "1)]", "the call list nests too deeply to read"),
    ("[f('Paris')]", "call f has a positional argument; name every argument"),
    ("[f(**kw)]", "call f unpacks **arguments"),
    ("[f(x=1, x=2)]", "call f gives argument 'x' twice"),
    ("[f(x=1), 3]", "item #2 of the call list is an expression, not a function call"),
    ("[f(x=1)(y=2)]", "call #1 does not call a plain function name"),
    ("[f(x=1)", "the answer: not valid Python call syntax ('[' was never closed)"),
    ("[" + "f(), " * 200 + "]", "too many calls (200, limit 128)"),
    ("Here: [f(x=open('secrets'))] done", "the answer: argument 'x' of f is a function call"),
    ("f(x=" + "'a' " * 6000 + ")", "the call list is too long"),
]


@pytest.mark.parametrize(("text", "error"), PARSE_ERRORS)
def test_parse_errors(text, error):
    parsed = parse_tool_calls(text)
    assert not parsed.ok and not parsed.calls
    assert error in parsed.error


def test_parse_non_text():
    assert "expected text" in parse_tool_calls(None).error  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 99_999,
        '"' + "[" * 99_999,  # brackets that only look like they are inside a string
        "{" * 50_000 + "}" * 50_000,
        "{" * 99_999,
        "```" * 33_000,
        "<tool_call>" * 9_000,
        '{"a": ' * 16_000,
        "[1, " * 25_000,
        '[{"name": "f", "arguments": {}}' + ", {}" * 20_000 + "]",
        "{}" * 50_000,
        '{"name": "f"}\n' * 7_000,
        "z [a(" + "()" * 45_000,
        ("z [a(" + "()" * 3000) * 15,
        ("z [a(" + "'x'," * 3000) * 8,
        "[a(" * 33_000,
        "f(" * 33_000,
        "[TOOL_CALLS]" * 8_000,
        "[TOOL_CALLS]f[ARGS]" * 5_000,
        "<|python_tag|>" * 7_000,
        "<|python_tag|>f(x=" + "(" * 20_000,
    ],
)
def test_parse_hostile_inputs_are_fast(text):
    start = time.perf_counter()
    parsed = parse_tool_calls(text)
    assert time.perf_counter() - start < 1.0
    assert isinstance(parsed.ok, bool)


# ----------------------------------------------------------------------- equality
@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (1, 1.5, False),
        (True, 1, False),
        (False, 0, False),
        (True, True, True),
        ("a", "a", True),
        ("Paris", "paris", False),
        ("1", 1, False),
        (None, None, True),
        (None, "", False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ([1, [2, {"x": 3}]], [1.0, [2, {"x": 3.0}]], True),
        ({"a": 1, "b": [True]}, {"b": [True], "a": 1}, True),
        ({"a": 1}, {"a": 1, "b": None}, False),
        ({"a": [True]}, {"a": [1]}, False),
        ([], {}, False),
    ],
)
def test_values_equal(a, b, equal):
    assert values_equal(a, b) is equal
    assert values_equal(b, a) is equal


# ---------------------------------------------------------------------- verifier
def dumps(*items):
    return json.dumps(list(items))


def with_args(call, **changes):
    args = {k: v for k, v in {**call["arguments"], **changes}.items() if v is not ...}
    return {"name": call["name"], "arguments": args}


VERIFY = [
    (dumps(W, F), True, "all 2 call(s) match"),
    (dumps(F, W), True, "match"),  # order is ignored
    ("<tool_call>" + json.dumps(F) + "</tool_call>\n<tool_call>" + json.dumps(W) + "</tool_call>", True, "match"),
    (dumps(W, with_args(F, days=7.0)), True, "match"),  # 7 == 7.0
    (dumps(W, with_args(F, days="7")), False, "argument 'days' of get_forecast: expected 7, got '7'"),
    (dumps(with_args(W, unit="fahrenheit"), F), False,
     "argument 'unit' of get_weather: expected 'celsius', got 'fahrenheit'"),
    (dumps(with_args(W, city="paris"), F), False, "expected 'Paris', got 'paris'"),
    (dumps(W), False, "missing call get_forecast(city='Tokyo', days=7)"),
    (dumps(W, F, {"name": "get_time", "arguments": {"tz": "UTC"}}), False, "extra call get_time(tz='UTC')"),
    (dumps(W, F, F), False, "extra call get_forecast(city='Tokyo', days=7)"),
    (dumps(with_args(W, unit=...), F), False, "argument 'unit' of get_weather: missing (expected 'celsius')"),
    (dumps(W, with_args(F, verbose=True)), False, "argument 'verbose' of get_forecast: unexpected (got True)"),
    (dumps(W, {"name": "get_forcast", "arguments": F["arguments"]}), False, "missing call get_forecast"),
    (dumps(W, {"name": "get_forcast", "arguments": F["arguments"]}), False, "extra call get_forcast"),
    ("The weather in Paris is nice.", False, "no tool calls found; missing call get_weather"),
    ("[]", False, "no tool calls found"),
    ("<tool_call>{oops</tool_call>", False, "could not parse tool calls: <tool_call> block #1: invalid JSON"),
]


@pytest.mark.parametrize(("completion", "ok", "reason"), VERIFY)
def test_verify(task, completion, ok, reason):
    verdict = task.verify(EX, completion)
    assert verdict.ok is ok, verdict
    assert reason in verdict.reason, verdict


@pytest.mark.parametrize(
    ("gold", "got", "ok"),
    [
        ({"flag": True}, {"flag": 1}, False),  # True != 1
        ({"flag": 1}, {"flag": True}, False),
        ({"flag": False}, {"flag": False}, True),
        ({"xs": [1, 2, 3]}, {"xs": [1, 2, 3]}, True),
        ({"xs": [1, 2, 3]}, {"xs": [3, 2, 1]}, False),  # lists are ordered
        ({"p": {"adults": 2, "kids": [1, {"age": 4}]}}, {"p": {"kids": [1.0, {"age": 4.0}], "adults": 2}}, True),
        ({"p": {"adults": 2, "kids": [1, {"age": 4}]}}, {"p": {"adults": 2, "kids": [1, {"age": 5}]}}, False),
        ({"s": "a b"}, {"s": "a  b"}, False),
        ({}, {}, True),
    ],
)
def test_verify_argument_types(task, gold, got, ok):
    example = {"query": "q", "tools": [], "answers": [{"name": "f", "arguments": gold}]}
    assert task.verify(example, json.dumps({"name": "f", "arguments": got})).ok is ok


def test_same_function_twice_is_a_multiset(task):
    a, b = {"name": "is_prime", "arguments": {"num": 221}}, {"name": "is_prime", "arguments": {"num": 223}}
    example = {"query": "q", "tools": [], "answers": [a, b]}
    assert task.verify(example, dumps(b, a)).ok
    verdict = task.verify(example, dumps(a, a))
    assert not verdict.ok and "argument 'num' of is_prime: expected 223, got 221" in verdict.reason


def test_empty_gold_passes_only_with_no_calls(task):
    example = {"query": "q", "tools": [], "answers": []}
    assert task.verify(example, "No tool can answer that.").ok
    assert not task.verify(example, dumps(W)).ok


def test_reason_is_bounded(task):
    many = [{"name": f"f{i}", "arguments": {"x": "y" * 500}} for i in range(30)]
    verdict = task.verify(EX, json.dumps(many))
    assert not verdict.ok and "more difference(s)" in verdict.reason and len(verdict.reason) < 1200
    huge = [{"name": "n" * 5000, "arguments": {"k" * 5000: "v" * 5000, **{str(i): i for i in range(100)}}}]
    verdict = task.verify(EX, json.dumps(huge))
    assert not verdict.ok and len(verdict.reason) < 1200
    verdict = task.verify(EX, json.dumps([{"name": "n" * 5000, "arguments": [1]}]))
    assert "arguments of nnn" in verdict.reason and len(verdict.reason) < 200
    long_key = {"name": "get_weather", "arguments": {**W["arguments"], "k" * 5000: 1}}
    verdict = task.verify(EX, dumps(long_key, F))
    assert "unexpected" in verdict.reason and len(verdict.reason) < 300


# ------------------------------------------------------------------- tool schemas
XLAM_TOOL = {
    "name": "search",
    "description": "Search things.",
    "parameters": {
        "query": {"type": "str", "description": "Words."},
        "limit": {"type": "int, optional", "description": "Max results."},
        "lang": {"type": "str", "description": "Language.", "default": "en"},
        "ids": {"type": "List[int]", "description": "Ids."},
        "opts": {"type": "Dict[str, Any]", "description": "Options."},
        "when": {"type": "datetime", "description": "Start."},
        "ratio": {"type": "Union[int, float]", "description": "Ratio."},
        "exact": {"type": "bool", "description": "Exact match.", "default": False},
    },
}


def test_xlam_tool_is_normalised_to_openai_style():
    tool = normalize_tool(XLAM_TOOL)
    assert tool["type"] == "function"
    fn = tool["function"]
    assert fn["name"] == "search" and fn["description"] == "Search things."
    params = fn["parameters"]
    assert params["type"] == "object"
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "Words."}
    assert props["limit"]["type"] == "integer"
    assert props["lang"] == {"type": "string", "description": "Language.", "default": "en"}
    assert props["ids"] == {"type": "array", "items": {"type": "integer"}, "description": "Ids."}
    assert props["opts"]["type"] == "object"
    assert props["ratio"]["type"] == "number"
    assert props["exact"] == {"type": "boolean", "description": "Exact match.", "default": False}
    # no JSON-schema form: the original type stays in the description
    assert "type" not in props["when"] and props["when"]["description"] == "Start. (type: datetime)"
    # a default or ", optional" makes an argument optional
    assert params["required"] == ["query", "ids", "opts", "when", "ratio"]


def test_json_schema_tools_plain_and_wrapped():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    plain = normalize_tool({"name": "w", "description": "d", "parameters": schema})
    wrapped = normalize_tool({"type": "function", "function": {"name": "w", "description": "d", "parameters": schema}})
    assert plain == wrapped == {"type": "function", "function": {"name": "w", "description": "d", "parameters": schema}}
    assert normalize_tool(plain) == plain  # idempotent
    no_required = normalize_tool({"name": "w", "parameters": {"type": "object", "properties": {}}})
    assert no_required["function"]["parameters"] == {"type": "object", "properties": {}, "required": []}
    assert normalize_tool({"name": "noargs"})["function"]["parameters"]["properties"] == {}


def test_xlam_argument_named_like_schema_keys_stays_xlam():
    tool = normalize_tool({"name": "t", "parameters": {"properties": {"type": "str", "description": "Props."},
                                                       "type": {"type": "int", "description": "Kind."}}})
    props = tool["function"]["parameters"]["properties"]
    assert props == {"properties": {"type": "string", "description": "Props."},
                     "type": {"type": "integer", "description": "Kind."}}


def test_tools_as_json_string_and_single_tool():
    assert normalize_tools(json.dumps([XLAM_TOOL])) == [normalize_tool(XLAM_TOOL)]
    assert normalize_tools(XLAM_TOOL) == [normalize_tool(XLAM_TOOL)]
    with pytest.raises(ValueError, match="no 'name'"):
        normalize_tool({"description": "nameless"})
    with pytest.raises(ValueError, match="not valid JSON"):
        normalize_tools("[{oops")


# -------------------------------------------------------------- built-in sample
def test_builtin_sample_covers_the_formats():
    assert 18 <= len(SAMPLE) <= 30
    assert any(isinstance(r["tools"], str) and isinstance(r["answers"], str) for r in SAMPLE)
    examples = [normalize_example(r) for r in SAMPLE]
    raw_tools = [t for r in SAMPLE for t in (json.loads(r["tools"]) if isinstance(r["tools"], str) else r["tools"])]
    assert any("function" in t for t in raw_tools)  # OpenAI-wrapped
    assert any(t.get("parameters", {}).get("type") == "object" and "function" not in t for t in raw_tools)
    assert any(isinstance(p, dict) and "description" in p and "type" in p and p.get("type") != "object"
               for t in raw_tools if "parameters" in t for p in t["parameters"].values())  # xLAM style
    assert any(len(ex["answers"]) > 1 for ex in examples)
    values = [v for ex in examples for a in ex["answers"] for v in a["arguments"].values()]
    for kind in (bool, int, float, str, list, dict):
        assert any(type(v) is kind for v in values), kind


def test_builtin_sample_splits_and_gold_answers_pass(task):
    train, test = task.load_examples("train"), task.load_examples("test")
    assert len(train) + len(test) == len(SAMPLE) and len(test) == 2
    assert not {e["query"] for e in train} & {e["query"] for e in test}
    assert task.load_examples("train", n=5, seed=3) == task.load_examples("train", n=5, seed=3)
    for ex in train + test:
        names = {t["function"]["name"] for t in task.tools(ex)}
        assert {a["name"] for a in ex["answers"]} <= names, ex["id"]
        assert task.verify(ex, json.dumps(ex["answers"])).ok
        tagged = "".join(f"<tool_call>\n{json.dumps(a)}\n</tool_call>\n" for a in reversed(ex["answers"]))
        assert task.verify(ex, tagged).ok


def test_messages_render_with_tools_through_the_chat_template(task):
    tok = tiny.build_tokenizer()
    ex = next(e for e in task.load_examples("train") if len(e["tools"]) > 1)
    text = prompts.render(tok, task.messages(ex), task.tools(ex))
    assert ex["query"] in text and "<tools>" in text
    for tool in task.tools(ex):
        assert f'"name": "{tool["function"]["name"]}"' in text
    assert task.messages(ex)[0] == {"role": "system", "content": task.system_prompt}
    # a template without tool support gets the tools in the system prompt instead
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    text = prompts.render(tok, task.messages(ex), task.tools(ex))
    assert all(t["function"]["name"] in text for t in task.tools(ex))


# ------------------------------------------------------------------------- files
def xlam_rows(n):
    return [{"id": i, "query": f"What is the weather in city {i}?", "tools": json.dumps([XLAM_TOOL]),
             "answers": json.dumps([{"name": "search", "arguments": {"query": f"city {i}", "ids": [i]}}])}
            for i in range(n)]


def test_load_jsonl_in_xlam_format_with_heldout_split(tmp_path):
    path = tmp_path / "xlam.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in xlam_rows(30)) + "\n")
    task = load_task("function_calling", path=str(path), test_fraction=0.2)
    train, test = task.load_examples("train"), task.load_examples("test")
    assert len(train) == 24 and len(test) == 6
    assert sorted(e["id"] for e in train + test) == sorted(str(i) for i in range(30))
    ex = test[0]
    assert isinstance(ex["answers"], list) and task.tools(ex)[0]["function"]["name"] == "search"
    assert task.verify(ex, json.dumps(ex["answers"])).ok
    # the split depends on the content, not on the file order
    path.write_text("\n".join(json.dumps(r) for r in reversed(xlam_rows(30))))
    assert {e["id"] for e in FunctionCallingTask(path=str(path), test_fraction=0.2).load_examples("test")} == {
        e["id"] for e in test}


def test_load_parquet_and_test_path(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(xlam_rows(5)), tmp_path / "train.parquet")
    (tmp_path / "test.json").write_text(json.dumps(xlam_rows(2)))
    task = FunctionCallingTask(path=str(tmp_path / "train.parquet"), test_path=str(tmp_path / "test.json"))
    assert len(task.load_examples("train")) == 5 and len(task.load_examples("test")) == 2


def test_parquet_with_object_answers_warns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [r for r in SAMPLE if not isinstance(r["answers"], str)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "objects.parquet")
    task = FunctionCallingTask(path=str(tmp_path / "objects.parquet"))
    with pytest.warns(UserWarning, match="absent arguments come back as null"):
        task.load_examples()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answers": None}, "row 2 of .*: field 'answers' must be a list"),
        ({"tools": "[{oops"}, "row 2 of .*: field 'tools' is a string but not valid JSON"),
        ({"answers": '[{"name": "search", "arguments": [1]}]'}, "row 2 .*arguments of answer #1 .* must be an object"),
        ({"answers": '[{"arguments": {}}]'}, "row 2 .*answer #1 must be an object with a 'name'"),
        ({"query": ""}, "row 2 .*'query' must be a non-empty string"),
        ({"tools": [{"description": "x"}]}, "row 2 .*a tool has no 'name'"),
    ],
)
def test_bad_rows_name_row_and_field(tmp_path, change, message):
    rows = xlam_rows(2)
    rows[1].update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=message):
        FunctionCallingTask(path=str(path)).load_examples()


def test_missing_field_is_named(tmp_path):
    rows = xlam_rows(3)
    del rows[2]["answers"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"row 3 of .*bad.jsonl: missing field 'answers'"):
        FunctionCallingTask(path=str(path)).load_examples()


@pytest.mark.parametrize(("options", "message"), [({"test_fraction": 0}, "test_fraction"),
                                                  ({"test_path": "t.jsonl"}, "test_path needs path")])
def test_bad_option_values(options, message):
    with pytest.raises(ValueError, match=message):
        load_task("function_calling", **options)


# ------------------------------------------- every format: right, wrong, missing, extra, code
# One writer per format of README.md's table ("Function calling"): calls -> the text a model would write.
def _objects(calls, key="arguments"):
    return [{"name": c["name"], key: c["arguments"]} for c in calls]


def _py_call(c):
    return f"{c['name']}({', '.join(f'{k}={v!r}' for k, v in c['arguments'].items())})"


FORMATS = {
    "hermes_tags": lambda cs: "".join(f"<tool_call>\n{json.dumps(o)}\n</tool_call>\n" for o in _objects(cs)),
    "json_list": lambda cs: json.dumps(_objects(cs)),
    "json_object": lambda cs: json.dumps(_objects(cs)[0]) if len(cs) == 1 else None,
    "json_lines": lambda cs: "\n".join(json.dumps(o) for o in _objects(cs)),
    "fenced_json_with_prose": lambda cs: f"I'll call the tools.\n```json\n{json.dumps(_objects(cs))}\n```\nDone.",
    "llama3_parameters": lambda cs: "\n".join(json.dumps(o) for o in _objects(cs, "parameters")),
    "llama3_python_tag": lambda cs: "<|python_tag|>" + "; ".join(json.dumps(o) for o in _objects(cs, "parameters")),
    "mistral_tool_calls": lambda cs: "[TOOL_CALLS] " + json.dumps(_objects(cs)),
    "mistral_args": lambda cs: "".join(f"[TOOL_CALLS]{c['name']}[ARGS]{json.dumps(c['arguments'])}" for c in cs),
    "openai_tool_calls": lambda cs: json.dumps({"role": "assistant", "tool_calls": [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}} for i, c in enumerate(cs)]}),
    "openai_function_wrapper": lambda cs: json.dumps([{"type": "function", "function": o} for o in _objects(cs)]),
    "python_calls": lambda cs: "[" + ", ".join(_py_call(c) for c in cs) + "]",
    "python_calls_in_prose": lambda cs: "Here you go: [" + ", ".join(_py_call(c) for c in cs) + "] Anything else?",
}
T = {"name": "get_time", "arguments": {"tz": "UTC"}}
W_PARIS = {"query": "Weather in Paris?", "tools": "[]", "answers": json.dumps([W])}
CODE_MARK = "CODE_GOES_HERE"


def gold_for(fmt):
    """Two gold calls, or one for a format that holds one call only."""
    return (EX, [W, F]) if FORMATS[fmt]([W, F]) is not None else (W_PARIS, [W])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_correct_answer_passes(task, fmt):
    example, gold = gold_for(fmt)
    text = FORMATS[fmt](list(reversed(gold)))
    verdict = task.verify(example, text)
    assert verdict.ok, (text, verdict)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_wrong_value_fails(task, fmt):
    example, gold = gold_for(fmt)
    verdict = task.verify(example, FORMATS[fmt]([with_args(W, city="Lyon")] + gold[1:]))
    assert not verdict.ok and "argument 'city' of get_weather: expected 'Paris', got 'Lyon'" in verdict.reason


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_missing_call_fails(task, fmt):
    text = FORMATS[fmt]([W])
    verdict = task.verify(EX, text)
    assert not verdict.ok and "missing call get_forecast(city='Tokyo', days=7)" in verdict.reason, verdict


@pytest.mark.parametrize("fmt", sorted(f for f in FORMATS if FORMATS[f]([W, F]) is not None))
def test_format_extra_call_fails(task, fmt):
    verdict = task.verify(EX, FORMATS[fmt]([W, T, F]))
    assert not verdict.ok and "extra call get_time(tz='UTC')" in verdict.reason, verdict


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_format_code_in_an_argument_is_rejected_never_run(task, fmt, tmp_path):
    # Code where a value belongs: were it evaluated, it would create a file.
    target = tmp_path / "pwned"
    code = f"open({str(target)!r}, 'w').write('x')"
    example, gold = gold_for(fmt)
    text = FORMATS[fmt]([with_args(W, city=CODE_MARK)] + gold[1:])
    for quoted in (f'\\"{CODE_MARK}\\"', f'"{CODE_MARK}"', f"'{CODE_MARK}'"):
        text = text.replace(quoted, code)
    assert code in text and CODE_MARK not in text
    verdict = task.verify(example, text)
    assert not verdict.ok
    assert ("not a literal value" in verdict.reason) if fmt.startswith("python") else ("invalid JSON" in verdict.reason)
    assert not target.exists()


def test_special_token_tool_tags_reach_the_verifier_through_the_engine(task):
    """A tokenizer whose <tool_call> tags are special tokens (the demo one): a correct two-call
    answer, generated token by token by HFEngine, reaches the verifier with its tags and passes."""
    import torch

    from r3rl.engine.hf import HFEngine
    from r3rl.types import SamplingParams

    tok = tiny.build_tokenizer()
    tag_id = tok.convert_tokens_to_ids("<tool_call>")
    assert tok.added_tokens_decoder[tag_id].special
    answer = FORMATS["hermes_tags"]([F, W]).rstrip("\n")
    script = tok(answer, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert script.count(tag_id) == 2
    prompt = prompts.encode(tok, task.messages(EX), task.tools(EX))
    model = tiny.build_model(tok)

    def force_script(module, args, kwargs, output):
        # The next token after position p is script[p + 1 - len(prompt)]: the model "wants" exactly the answer.
        logits = torch.full_like(output.logits, -1e4)  # [B, S, V]
        for b, p in enumerate(kwargs["position_ids"][:, -1].tolist()):
            step = p + 1 - len(prompt)
            logits[b, -1, script[min(max(step, 0), len(script) - 1)]] = 0.0
        output.logits = logits
        return output

    handle = model.register_forward_hook(force_script, with_kwargs=True)
    try:
        gen = HFEngine(model, tok).generate([prompt], SamplingParams(max_new_tokens=len(script) + 8, temperature=0.0))[0][0]
    finally:
        handle.remove()
    assert gen.token_ids == script and gen.finish_reason == "stop"
    assert gen.text == answer and gen.text.count("<tool_call>") == 2
    verdict = task.verify(EX, gen.text)
    assert verdict.ok, verdict
    assert "<tool_call>" not in tok.decode(gen.token_ids, skip_special_tokens=True)  # what the tags would have been lost to
