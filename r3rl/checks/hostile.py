"""A seeded generator of adversarial model completions, for checking that a verifier never crashes,
hangs or runs model output.

`hostile_case(seed, i, example)` is a pure function of its arguments: case i of a run can be rebuilt
alone to reproduce a finding. The families (see FAMILIES) cover what a parser reads:

    code        Python code, dunder access and imports, planted in every syntax a verifier parses
                (answer tags, equations, tool-call JSON names / keys / values, fenced blocks, Python
                call syntax, Mistral / Llama tool prefixes, bare text). Each payload, if ever executed,
                creates the file SENTINEL stands for, so execution is detected, not guessed.
    nesting     brackets, braces and tags nested 10 to 1,000,000 deep, balanced or not
    numbers     huge integers, exponents, powers, floats that overflow, digits past Python's
                int-string limit, division towers
    unicode     look-alike digits, tags and quotes (full-width, Arabic-Indic, Cyrillic, superscripts),
                zero-width and bidi characters, combining marks, lone surrogates
    control     NUL, escape sequences, carriage returns, line/paragraph separators, BOMs
    huge        megabyte strings: repeated tags, operators, digits, open brackets
    json        JSON bombs: huge arrays and objects, duplicate keys, NaN / Infinity, long escapes,
                deep nesting inside tool-call wrappers
    shaped      near-valid answers built from the example's own numbers and strings, then broken
    soup        random sequences of the tokens above

Sizes are drawn so most cases are small (a run of 100,000 cases takes minutes), with about one
case in a hundred at 100 kB to 1 MB.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable

__all__ = ["SENTINEL", "FAMILIES", "hostile_case", "payloads", "wrap"]

#: placeholder for the sentinel file's path; the runner substitutes a real, fresh path
SENTINEL = "@@SENTINEL@@"

_S = SENTINEL
# Code that would create the sentinel file if anything ever ran it (the real proof of execution),
# and dunder / builtin access a parser must refuse to even look up.
_EXEC_PAYLOADS = [
    f"__import__('pathlib').Path('{_S}').touch()",
    f"__import__('os').system('touch {_S}')",
    f"open('{_S}', 'w').write('x')",
    f"exec(\"__import__('pathlib').Path('{_S}').touch()\")",
    f"eval(\"open('{_S}','w')\")",
    f"(lambda: __import__('pathlib').Path('{_S}').touch())()",
    f"[__import__('pathlib').Path('{_S}').touch() for _ in [1]]",
    f"__builtins__.__import__('pathlib').Path('{_S}').touch()",
    f"().__class__.__base__.__subclasses__()[0].__init__.__globals__['__builtins__']['open']('{_S}','w')",
    f"globals()['__builtins__'].open('{_S}', 'w')",
    f"getattr(__import__('pathlib'), 'Path')('{_S}').touch()",
    f"compile(\"open('{_S}','w')\", 'x', 'exec')",
    f"import os; os.system('touch {_S}')",
    f"$(touch {_S})",
    f"`touch {_S}`",
    f"{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}; open('{_S}','w')",
]
_DUNDER = ["__import__", "__class__", "__globals__", "__builtins__", "__subclasses__", "__dict__", "__mro__",
           "__reduce__", "__getattribute__", "__init__", "__code__", "__loader__", "__spec__"]


def payloads() -> list[str]:
    """The code payloads, with SENTINEL where the sentinel path goes."""
    return list(_EXEC_PAYLOADS)


def _json_str(s: str) -> str:
    return json.dumps(s)


# Every syntax a built-in parser reads, as templates of one hole P (raw text) or J (a JSON string of P).
_WRAPPERS: list[str] = [
    "P",
    "<answer>P</answer>",
    "<answer> P = 24 </answer>",
    "<answer>24 = P</answer>",
    "<answer>(1 + P) * 2</answer>",
    "<answer>1 + 2</answer> P",
    "I think. <answer>P</answer> <answer>3</answer>",
    "The answer is P",
    "Answer: P",
    "<think>P</think><answer>P</answer>",
    '<tool_call>{"name": J, "arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"x": J}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {J: 1}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": P}</tool_call>',
    '<tool_call>P</tool_call>',
    '<tool_call>```json\n{"name": "f", "arguments": {"x": J}}\n```</tool_call>',
    '[{"name": J, "arguments": {"q": J}}]',
    '{"name": "f", "arguments": J}',
    '{"name": "f", "parameters": {"x": J}}',
    '{"type": "function", "function": {"name": J, "arguments": J}}',
    '{"tool_calls": [{"function": {"name": "f", "arguments": J}}]}',
    '```json\n[{"name": "f", "arguments": {"x": J}}]\n```',
    "```python\nP\n```",
    "```tool_code\nP\n```",
    "[f(x=P)]",
    "[P(x=1)]",
    "f(P)",
    "[f(x=1), P]",
    "print(P)",
    '[TOOL_CALLS] [{"name": J, "arguments": {"x": P}}]',
    '<|python_tag|>{"name": "f", "parameters": {"x": J}}',
    "<|python_tag|>P",
    '{"name": "f", "arguments": {"x": 1}}\n{"name": J, "arguments": {}}',
    "Calling the tool: {\"name\": \"f\", \"arguments\": {\"P\": 1}}",
]


def wrap(template: str, hole: str) -> str:
    """Put `hole` into a template: P raw, J as a JSON string literal."""
    return template.replace("J", "\x00J\x00").replace("P", hole).replace("\x00J\x00", _json_str(hole))


def _size(rng: random.Random) -> int:
    """Mostly small, sometimes large: 1 case in 100 is 100 kB - 1 MB."""
    r = rng.random()
    if r < 0.01:
        return rng.randint(100_000, 1_000_000)
    if r < 0.10:
        return rng.randint(1_000, 20_000)
    return rng.randint(1, 300)


def _code(rng: random.Random, ex: dict[str, Any]) -> str:
    hole = rng.choice(_EXEC_PAYLOADS) if rng.random() < 0.8 else f"x.{rng.choice(_DUNDER)}"
    return wrap(rng.choice(_WRAPPERS), hole)


def _nesting(rng: random.Random, ex: dict[str, Any]) -> str:
    n = rng.choice([10, 63, 64, 65, 100, 999, 1000, 1001, 10_000, 100_000, 1_000_000 if rng.random() < 0.05 else 50_000])
    kind = rng.randrange(9)
    if kind == 0:
        body = "(" * n + "1" + ")" * n
    elif kind == 1:
        body = "[" * n + "]" * n
    elif kind == 2:
        body = '{"a":' * n + "1" + "}" * n
    elif kind == 3:
        body = "(" * n
    elif kind == 4:
        body = "[" * n + "1"
    elif kind == 5:
        body = "<answer>" * n + "1" + "</answer>" * rng.randint(0, 3)
    elif kind == 6:
        body = "<tool_call>" * n
    elif kind == 7:
        body = "-" * n + "1"
    else:
        body = "f(" * n + ")" * n
    return wrap(rng.choice(_WRAPPERS), body) if rng.random() < 0.5 else body


def _numbers(rng: random.Random, ex: dict[str, Any]) -> str:
    d = rng.choice([20, 400, 4299, 4300, 4301, 10_000, 100_000])
    forms = [
        "9" * d,
        "1" + "0" * d,
        f"1e{rng.choice([308, 309, 400, 99999, 10 ** 9])}",
        f"-1e{rng.choice([308, 400])}",
        "10**10**10",
        "9**9**9**9",
        "2^" + "9" * rng.randint(1, 50),
        "2**" + "9" * rng.randint(1, 50),
        "1" + "0" * 5000 + ".5",
        "0." + "0" * d + "1",
        "*".join(["99999999"] * rng.randint(2, 2000)),
        "/".join(["7"] * rng.randint(2, 5000)),
        "(" + "1/3*" * rng.randint(1, 3000) + "1)",
        "1/0", "0/0", "-0", "+1", "007", "0x10", "0b11", "1_000", "1j", "NaN", "Infinity", "-Infinity", "inf", "nan",
        str(2 ** 63), str(-(2 ** 63) - 1), "1." * rng.randint(1, 1000),
    ]
    body = rng.choice(forms)
    if rng.random() < 0.3:
        body = f'{{"name": "f", "arguments": {{"x": {body}}}}}'
    return wrap(rng.choice(_WRAPPERS), body) if rng.random() < 0.6 else body


_LOOKALIKES = [
    "１２３", "٣+٤", "۳", "१२", "²³", "½", "Ⅻ", "𝟗", "⁹", "₉",  # digits that are not ASCII digits
    "＜answer＞1＜/answer＞", "<аnswer>1</аnswer>", "<answer>1</answer\u200b>", "＜tool_call＞",  # tag look-alikes
    "“name”: “f”", "«x»", "′", "″", "−", "×", "÷", "∗", "⁄", "＋", "（1）", "﹙1﹚",  # quote / operator look-alikes
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u202d", "\u2066", "\u061c",  # invisible / bidi
    "e\u0301" * 50, "\u0300" * 500, "Z̸̢̛̲͓̀a̷l̴g̸o̷",  # combining marks
    "\ud800", "\udfff", "\ud83d", "\U0010ffff", "\ufffd", "\U0001f600" * 20,  # lone surrogates, edges
    "ſ", "K", "İ", "ß", "ﬃ",  # case-folding oddities
]


def _unicode(rng: random.Random, ex: dict[str, Any]) -> str:
    parts = [rng.choice(_LOOKALIKES) for _ in range(rng.randint(1, 12))]
    body = "".join(parts)
    return wrap(rng.choice(_WRAPPERS), body) if rng.random() < 0.7 else body


_CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\r", "\r\n", "\x1b[2J", "\x1b]0;x\x07", "\x7f",
            "\x85", "\u2028", "\u2029", "\ufeff", "\t", "\n" * 100, "\\", "\\u0000", "\\ud800"]


def _control(rng: random.Random, ex: dict[str, Any]) -> str:
    body = "1".join(rng.choice(_CONTROL) for _ in range(rng.randint(1, 20)))
    return wrap(rng.choice(_WRAPPERS), body)


def _huge(rng: random.Random, ex: dict[str, Any]) -> str:
    n = rng.randint(100_000, 1_000_000)
    unit = rng.choice(["a", "1+", "(", "[", "{", "<answer>", "</answer>", "<answer>1</answer>", "<tool_call>",
                       "</tool_call>", "```", "```json\n", '{"name":', "\\", '"', "9", " ", "\n", "=", "é", "\U0001f600"])
    body = unit * max(1, n // len(unit))
    return wrap(rng.choice(_WRAPPERS), body) if rng.random() < 0.5 else body


def _json(rng: random.Random, ex: dict[str, Any]) -> str:
    kind = rng.randrange(8)
    n = _size(rng)
    if kind == 0:
        body = "[" + ",".join(["1"] * n) + "]"
    elif kind == 1:
        body = "{" + ",".join(f'"k{i}": {i}' for i in range(min(n, 200_000))) + "}"
    elif kind == 2:
        body = '{"name": "f", ' + ", ".join('"name": "g"' for _ in range(min(n, 50_000))) + "}"
    elif kind == 3:
        body = '{"name": "f", "arguments": {"x": ' + rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-0.0"]) + "}}"
    elif kind == 4:
        body = '{"name": "f", "arguments": {"x": "' + "\\u0000" * min(n, 200_000) + '"}}'
    elif kind == 5:
        d = rng.choice([60, 64, 65, 1000, 100_000])
        body = '{"name": "f", "arguments": {"x": ' + "[" * d + "]" * d + "}}"
    elif kind == 6:
        body = "[" + ",".join('{"name": "f", "arguments": {}}' for _ in range(min(n, 30_000))) + "]"
    else:
        body = '{"name": "' + "a" * n + '", "arguments": {"' + "b" * n + '": 1}}'
    return wrap(rng.choice(_WRAPPERS[10:]), body) if rng.random() < 0.5 else body


def _example_atoms(ex: dict[str, Any]) -> tuple[list[int], list[str]]:
    """Numbers and strings found anywhere in an example (its tool names, operands, ...)."""
    nums: list[int] = []
    strs: list[str] = []

    def walk(v: Any, depth: int = 0) -> None:
        if depth > 8:
            return
        if isinstance(v, bool):
            return
        if isinstance(v, int):
            nums.append(v)
        elif isinstance(v, str) and len(v) < 200:
            strs.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                strs.append(str(k))
                walk(x, depth + 1)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x, depth + 1)

    walk(ex)
    return nums[:50] or [1, 2, 3], strs[:200] or ["f"]


_SUFFIXES = ["", " ", ".0", "e0", "\u200b", "０", "\x00", "!"]


def _shaped(rng: random.Random, ex: dict[str, Any]) -> str:
    nums, strs = _example_atoms(ex)
    ops = "+-*/"
    expr = str(rng.choice(nums))
    for _ in range(rng.randint(0, 5)):
        expr = f"({expr} {rng.choice(ops)} {rng.choice(nums)})" if rng.random() < 0.5 else f"{expr} {rng.choice(ops)} {rng.choice(nums)}"
    name, key = rng.choice(strs), rng.choice(strs)
    hole = rng.choice(_EXEC_PAYLOADS + [f"x.{d}" for d in _DUNDER])
    forms = [
        f"<answer>{expr}</answer>",
        f"<answer>{expr} = {rng.choice(nums)}</answer>",
        f"<answer>{expr} + {hole}</answer>",
        f"<answer>{hole}</answer>",
        f"<answer>{rng.choice(nums)}{rng.choice(_SUFFIXES)}</answer>",
        json.dumps([{"name": name, "arguments": {key: rng.choice(nums)}}]),
        json.dumps([{"name": name, "arguments": {key: hole}}]),
        f'<tool_call>{json.dumps({"name": name, "arguments": {key: rng.choice(strs)}})}</tool_call>',
        f"[{name}({key}={hole})]",
        f"[{name}({key}={rng.choice(nums)})]",
        f"{name}(**{{'{key}': {hole}}})",
    ]
    return rng.choice(forms)


_SOUP = ["<answer>", "</answer>", "<tool_call>", "</tool_call>", "<think>", "</think>", "```", "```json", "[TOOL_CALLS]",
         "<|python_tag|>", "{", "}", "[", "]", "(", ")", '"', "'", ":", ",", "=", "+", "-", "*", "/", "**", "//", "%",
         "^", "1", "99", "1e5", "name", "arguments", "parameters", "function", "lambda", "__import__", "__class__",
         "import", "os", ".", "\\", "\n", " ", "\x00", "１", "NaN", "null", "true", "None", "f(", "x=", SENTINEL]


def _soup(rng: random.Random, ex: dict[str, Any]) -> str:
    return "".join(rng.choice(_SOUP) for _ in range(min(_size(rng), 5000)))


FAMILIES: dict[str, Callable[[random.Random, dict[str, Any]], str]] = {
    "code": _code, "nesting": _nesting, "numbers": _numbers, "unicode": _unicode, "control": _control,
    "huge": _huge, "json": _json, "shaped": _shaped, "soup": _soup,
}
# Large families are drawn less often so a 100,000-case run stays within minutes.
_WEIGHTS = {"code": 25, "nesting": 8, "numbers": 12, "unicode": 12, "control": 8, "huge": 1, "json": 8,
            "shaped": 16, "soup": 10}
_NAMES = list(_WEIGHTS)
_CUM = [sum(list(_WEIGHTS.values())[: i + 1]) for i in range(len(_WEIGHTS))]


def hostile_case(seed: int, i: int, example: dict[str, Any] | None = None) -> tuple[str, str]:
    """(family, completion) of case i: a pure function of (seed, i, example)."""
    rng = random.Random(seed * 1_000_003 + i)
    family = rng.choices(_NAMES, cum_weights=_CUM)[0]
    return family, FAMILIES[family](rng, example or {})
