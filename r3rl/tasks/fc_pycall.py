"""Tool calls written as Python calls, read with `ast` and never run.

BFCL's prompting mode (and Llama 3.2's "pythonic" tool format) asks for

    [get_weather(city='Paris', days=2), get_time(tz="UTC")]

This module turns such text into (name, arguments) pairs. The text is parsed by
`ast.parse` only (no compile, no eval), and every argument must be a literal:
strings, numbers, booleans, None (and JSON's true / false / null), lists, tuples
(read as lists) and dicts with string keys. A name, call, attribute, operator,
f-string, lambda or comprehension in an argument is rejected with a reason, so
`f(x=__import__('os').system('...'))` is reported, not run.

Bounds: the text is at most MAX_PY_CHARS long and parsed inside a guard that
turns the parser's own limits (too many nested parentheses, RecursionError,
MemoryError on deep unary chains, the 4300-digit integer limit) into reasons;
literals nest at most MAX_LITERAL_DEPTH deep; integers fit in 64 bits; floats
are finite; at most MAX_CALLS calls.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

__all__ = ["PyCallError", "parse_python_calls", "find_python_call_lists", "looks_like_python_calls",
           "MAX_PY_CHARS", "MAX_CALLS"]

MAX_PY_CHARS = 20_000  # a list of calls longer than this is not a plausible answer
MAX_CALLS = 128  # calls in one answer
MAX_LITERAL_DEPTH = 64  # nesting of lists / dicts inside one argument
MAX_PROSE_CANDIDATES = 16  # "[name(" starts tried in free text
_INT_LIMIT = 2**63  # larger integers are not tool arguments (and would be slow to print in a reason)

_DOTTED = r"[A-Za-z_][\w.]*"
_STARTS_WITH_CALL = re.compile(r"\A\s*\[?\s*" + _DOTTED + r"\s*\(")
_LIST_OF_CALLS_START = re.compile(r"\[\s*" + _DOTTED + r"\s*\(")
_JSON_NAMES = {"true": True, "false": False, "null": None}
_STRUCTURE = re.compile(r"[\"'\[\](){}]")


class PyCallError(ValueError):
    """The text is meant as Python calls but is not a list of calls with literal arguments."""


def looks_like_python_calls(text: str) -> bool:
    """Starts like `name(` or `[name(`: JSON never does, so this decides between the two readers."""
    return _STARTS_WITH_CALL.match(text) is not None


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dotted_name(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _what(node: ast.AST) -> str:
    """A plain description of a non-literal, for the reason."""
    kinds = {ast.Call: "a function call", ast.Name: "a variable name", ast.Attribute: "an attribute",
             ast.BinOp: "an arithmetic expression", ast.BoolOp: "a boolean expression",
             ast.Compare: "a comparison", ast.JoinedStr: "an f-string", ast.Lambda: "a lambda",
             ast.Subscript: "an index expression", ast.Set: "a set", ast.IfExp: "a conditional expression",
             ast.ListComp: "a comprehension", ast.DictComp: "a comprehension", ast.SetComp: "a comprehension",
             ast.GeneratorExp: "a generator", ast.Starred: "a starred expression", ast.NamedExpr: "an assignment",
             ast.Await: "an await", ast.Yield: "a yield", ast.YieldFrom: "a yield"}
    if isinstance(node, ast.Name):
        return f"the variable name {_clip(node.id, 30)!r}"
    return kinds.get(type(node), "an expression")


def _number(value: Any, where: str) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT:
        raise PyCallError(f"{where} is an integer too large for a tool argument")
    if isinstance(value, float) and not math.isfinite(value):
        raise PyCallError(f"{where} is not a finite number")
    return value


def _literal(node: ast.AST, where: str, depth: int = 0) -> Any:
    """The value of a literal node; PyCallError naming `where` for anything that would need running."""
    if depth > MAX_LITERAL_DEPTH:
        raise PyCallError(f"{where} nests lists or dicts deeper than {MAX_LITERAL_DEPTH} levels")
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, bool)):
            return value
        if isinstance(value, (int, float)):
            return _number(value, where)
        raise PyCallError(f"{where} is a {type(value).__name__} literal; use a string, number, boolean, list or dict")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = node.operand
        if isinstance(inner, ast.Constant) and type(inner.value) in (int, float):
            return _number(-inner.value if isinstance(node.op, ast.USub) else inner.value, where)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item, where, depth + 1) for item in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise PyCallError(f"{where} has a dict key that is not a string")
            out[key.value] = _literal(value, where, depth + 1)
        return out
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise PyCallError(
        f"{where} is {_what(node)}, not a literal value; arguments must be plain strings, numbers, "
        "booleans, None, lists or dicts (they are read, never run)"
    )


def _call(node: ast.AST, index: int) -> tuple[str, dict[str, Any]]:
    if not isinstance(node, ast.Call):
        raise PyCallError(f"item #{index + 1} of the call list is {_what(node)}, not a function call")
    name = _dotted_name(node.func)
    if name is None:
        raise PyCallError(f"call #{index + 1} does not call a plain function name")
    if node.args:
        raise PyCallError(f"call {_clip(name)} has a positional argument; name every argument, as in f(x=1)")
    arguments: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise PyCallError(f"call {_clip(name)} unpacks **arguments; name every argument, as in f(x=1)")
        if kw.arg in arguments:
            raise PyCallError(f"call {_clip(name)} gives argument {_clip(kw.arg, 30)!r} twice")
        arguments[kw.arg] = _literal(kw.value, f"argument {_clip(kw.arg, 30)!r} of {_clip(name)}")
    return name, arguments


def parse_python_calls(text: str) -> list[tuple[str, dict[str, Any]]]:
    """`[f(a=1), g(b='x')]` or `f(a=1)` -> [(name, arguments), ...]. Raises PyCallError with a reason."""
    text = text.strip()
    if len(text) > MAX_PY_CHARS:
        raise PyCallError(f"the call list is too long ({len(text)} characters, limit {MAX_PY_CHARS})")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        if "integer string conversion" in str(e.msg):
            raise PyCallError("a number in the call list has too many digits") from None
        raise PyCallError(f"not valid Python call syntax ({_clip(str(e.msg), 80)})") from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        raise PyCallError("the call list nests too deeply to read") from None
    body = tree.body
    nodes = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    if len(nodes) > MAX_CALLS:
        raise PyCallError(f"too many calls ({len(nodes)}, limit {MAX_CALLS})")
    return [_call(node, i) for i, node in enumerate(nodes)]


def _bracket_end(text: str, start: int, limit: int) -> int:
    """Index just past the bracket that closes text[start] ('['), skipping quoted strings; -1 if none within limit."""
    depth, pos, stop = 0, start, min(len(text), start + limit)
    while True:
        m = _STRUCTURE.search(text, pos, stop)
        if m is None:
            return -1
        ch = m.group()
        if ch in "\"'":
            quote = text[m.start():m.start() + 3] if text.startswith(ch * 3, m.start()) else ch
            end = m.end() + len(quote) - 1
            while True:  # find the closing quote, honouring backslash escapes
                close = text.find(quote, end, stop)
                if close < 0:
                    return -1
                backslashes = len(text[end:close]) - len(text[end:close].rstrip("\\"))
                if backslashes % 2 == 0:
                    break
                end = close + 1
            pos = close + len(quote)
            continue
        depth += 1 if ch in "[({" else -1
        if depth == 0:
            return m.end()
        pos = m.end()


def find_python_call_lists(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Python call lists (`[f(x=1)]`) embedded in prose, left to right.

    A candidate that is not Python syntax is prose and skipped; one that parses
    but has a non-literal argument is an attempted call, so its PyCallError is raised.
    """
    calls: list[tuple[str, dict[str, Any]]] = []
    pos = 0
    for _ in range(MAX_PROSE_CANDIDATES):
        m = _LIST_OF_CALLS_START.search(text, pos)
        if m is None:
            break
        end = _bracket_end(text, m.start(), MAX_PY_CHARS)
        if end < 0:
            pos = m.end()
            continue
        try:
            tree = ast.parse(text[m.start():end], mode="eval")
        except (SyntaxError, RecursionError, MemoryError, ValueError, OverflowError):
            pos = m.end()
            continue
        if isinstance(tree.body, ast.List) and all(isinstance(n, ast.Call) for n in tree.body.elts):
            calls += parse_python_calls(text[m.start():end])
            pos = end
        else:
            pos = m.end()
    if len(calls) > MAX_CALLS:
        raise PyCallError(f"too many calls ({len(calls)}, limit {MAX_CALLS})")
    return calls
