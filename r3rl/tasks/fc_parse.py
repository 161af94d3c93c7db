"""Tool calls: parse them out of model text, and compare them with the gold calls.

Models write tool calls in several shapes; all of these are read (README.md,
"Function calling", has the table with one test per format):

    [{"name": "f", "arguments": {...}}, ...]          a JSON list (xLAM / APIGen)
    {"name": "f", "arguments": {...}}                  a single object
    {"name": "f", ...}\n{"name": "g", ...}            one object per line (JSON Lines; also "," or ";" between)
    ```json ... ```                                    fenced blocks, one or many, prose around them
    <tool_call>{"name": ...}</tool_call> ...          Hermes / Qwen tags, one or many
    {"name": "f", "parameters": {...}}                 Llama 3.1, optionally after <|python_tag|>
    [TOOL_CALLS] [{"name": ...}]                       Mistral (also [TOOL_CALLS]f[ARGS]{...})
    {"tool_calls": [...]}                              OpenAI message style
    {"type": "function", "function": {"name", "arguments"}}
    [f(city='Paris', days=2), g()]                     Python call syntax (BFCL prompting mode, Llama 3.2)

`arguments` may be an object or a JSON string holding one (OpenAI style). Python
calls are read by `r3rl.tasks.fc_pycall` with `ast`, literal arguments only, and
never run. Prose around the calls is ignored when no tag or fence is used (then
JSON values that look like calls, i.e. have "name", "function" or "tool_calls",
are read left to right, else Python call lists `[f(...)]`), and so is everything
up to a closing </think> (reasoning models).

Parsing never raises on any text: the size and the bracket nesting are bounded
before `json.loads` (whose C scanner recurses and can raise RecursionError), and
every failure comes back as `ParsedCalls.error`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from r3rl.tasks.fc_pycall import (PyCallError, find_python_call_lists, looks_like_python_calls,
                                  parse_python_calls)
from r3rl.types import Verdict

__all__ = ["ToolCall", "ParsedCalls", "parse_tool_calls", "compare_calls", "values_equal", "format_call",
           "MAX_TEXT_CHARS", "MAX_JSON_DEPTH"]

MAX_TEXT_CHARS = 100_000  # a completion longer than this is not a plausible tool-call answer
MAX_JSON_DEPTH = 64  # deepest [ / { nesting accepted; real arguments stay far below
MAX_SCAN_ATTEMPTS = 64  # JSON starts tried in free text before giving up
MAX_REASON_ITEMS = 4  # differences listed in a verdict's reason
MAX_VALUES = 128  # JSON values in one block (JSON Lines); more is not a plausible answer

# Failure classes of `compare_calls`, most structural first: the class names the first kind of
# difference in this order (a wrong function before its arguments). FunctionCallingTask adds
# no_call, unparseable_call and unknown_function, which need the text or the offered tools.
WRONG_FUNCTION = "wrong_function"
MISSING_CALL = "missing_call"
EXTRA_CALL = "extra_call"
MISSING_ARGUMENT = "missing_argument"
UNEXPECTED_ARGUMENT = "unexpected_argument"
WRONG_ARGUMENT_VALUE = "wrong_argument_value"

_TAG_OPEN, _TAG_CLOSE = "<tool_call>", "</tool_call>"
_THINK_CLOSE = "</think>"
_PYTHON_TAG = "<|python_tag|>"  # Llama 3.1: what follows is a tool call
_MISTRAL_CALLS, _MISTRAL_ARGS, _MISTRAL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
# End-of-turn markers some chat formats leave after a call when the engine's stop set misses them.
_TRAILING_MARKERS = ("<|eom_id|>", "<|eot_id|>", "</s>", "<|im_end|>", "<|end|>")
_JSON_START = re.compile(r"[\[{]")
_FENCE = re.compile(r"```[ \t]*([A-Za-z_]*)[ \t]*\n?(.*?)```", re.DOTALL)
_CALL_FENCES = ("", "json", "jsonl", "tool_call", "tool_code", "python", "py")
_SEPARATOR = re.compile(r"\s*[,;]?\s*")  # between JSON values in one block: newline, comma or semicolon


@dataclass(frozen=True)
class ToolCall:
    """One function call: a name and its JSON arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedCalls:
    """The calls found in a text, or why none could be read (error is "" on success)."""

    calls: tuple[ToolCall, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class _Bad(ValueError):
    """Internal: the text is not valid tool calls; the message becomes ParsedCalls.error."""


# --------------------------------------------------------------------------- JSON
_STRUCTURE = re.compile(r'["\[\]{}]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # the rest of a JSON string after its '"'


def _nesting_ok(text: str, start: int = 0, limit: int = MAX_JSON_DEPTH) -> bool:
    """False if a JSON decoder starting at `start` would nest brackets deeper than `limit`.

    Follows the decoder's view exactly: brackets inside strings do not count, and
    the value ends when its outermost bracket closes (the decoder stops there).
    Jumps between structural characters with regexes, so it runs at C speed.
    """
    if text.count("[", start) + text.count("{", start) <= limit:
        return True
    depth, pos = 0, start
    while True:
        m = _STRUCTURE.search(text, pos)
        if m is None:
            return True
        ch = m.group()
        if ch == '"':
            rest = _STRING_REST.match(text, m.end())
            if rest is None:  # unterminated string: the decoder fails there, no deeper
                return True
            pos = rest.end()
            continue
        if ch in "[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
            if depth <= 0:
                return True
        pos = m.end()


def _reject_constant(name: str) -> Any:
    raise _Bad(f"{name} is not valid JSON")


def _loads(text: str, where: str) -> Any:
    """json.loads with bounded nesting; NaN/Infinity rejected (not JSON, and NaN != NaN)."""
    if not _nesting_ok(text):
        raise _Bad(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except _Bad as e:
        raise _Bad(f"{where}: {e}") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a number with over 4300 digits
        raise _Bad(f"{where}: invalid JSON: {e}") from None


def _scan_json_values(text: str) -> list[Any]:
    """JSON objects/lists embedded in prose, left to right, skipping what does not decode.

    At most MAX_SCAN_ATTEMPTS starting brackets are tried, which bounds the work
    on text full of brackets.
    """
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    values: list[Any] = []
    pos, attempts = 0, 0
    while attempts < MAX_SCAN_ATTEMPTS:
        m = _JSON_START.search(text, pos)
        if m is None:
            break
        attempts += 1
        if not _nesting_ok(text, m.start()):
            raise _Bad(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            value, end = decoder.raw_decode(text, m.start())
        except (ValueError, _Bad):
            pos = m.start() + 1
            continue
        values.append(value)
        pos = end
    return values


# ------------------------------------------------------------------ call objects
def _clip(text: str, limit: int = 60) -> str:
    """Model-chosen text shown in a reason, cut so that a reason stays one readable line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call_from_object(obj: Any, where: str) -> ToolCall:
    if not isinstance(obj, dict):
        raise _Bad(f"{where} is {type(obj).__name__}, expected an object with 'name' and 'arguments'")
    if isinstance(obj.get("function"), dict):  # OpenAI {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise _Bad(f"{where} has no 'name' string")
    args = obj.get("arguments", obj.get("parameters"))
    if args is None:
        args = {}
    elif isinstance(args, str):
        args = _loads(args, f"arguments of {_clip(name)}") if args.strip() else {}
    if not isinstance(args, dict):
        raise _Bad(f"arguments of {_clip(name)} are {type(args).__name__}, expected an object")
    return ToolCall(name, args)


def _calls_from_value(value: Any, where: str) -> list[ToolCall]:
    """A decoded JSON value -> calls: a list of calls, {"tool_calls": [...]}, or one call."""
    if isinstance(value, dict) and "tool_calls" in value and "name" not in value:
        value = value["tool_calls"]
        if value is None:
            return []
    if isinstance(value, list):
        return [_call_from_object(item, f"call #{i + 1} of {where}") for i, item in enumerate(value)]
    return [_call_from_object(value, where)]


def _looks_like_call(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_looks_like_call(v) for v in value)
    return isinstance(value, dict) and ("name" in value or "function" in value or "tool_calls" in value)


def _tag_blocks(text: str) -> list[str]:
    """Bodies of <tool_call>...</tool_call> blocks; a last unclosed block runs to the end (a cut-off stop)."""
    blocks: list[str] = []
    pos = 0
    while True:
        start = text.find(_TAG_OPEN, pos)
        if start < 0:
            return blocks
        start += len(_TAG_OPEN)
        end = text.find(_TAG_CLOSE, start)
        blocks.append(text[start:] if end < 0 else text[start:end])
        if end < 0:
            return blocks
        pos = end + len(_TAG_CLOSE)


def _strip_fence(body: str) -> str:
    """A tag body may itself be fenced: <tool_call>```json {...}```</tool_call>."""
    m = _FENCE.search(body)
    return m.group(2) if m else body


def _json_values(body: str, where: str) -> list[Any]:
    """All JSON values of a block: one value, or several separated by newlines (JSON Lines), ',' or ';'."""
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    values: list[Any] = []
    pos = 0
    while pos < len(body):
        if len(values) == MAX_VALUES:
            raise _Bad(f"{where}: more than {MAX_VALUES} JSON values")
        if not _nesting_ok(body, pos):
            raise _Bad(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            value, pos = decoder.raw_decode(body, pos)
        except _Bad as e:
            raise _Bad(f"{where}: {e}") from None
        except ValueError as e:  # JSONDecodeError, and int() refusing a number with over 4300 digits
            raise _Bad(f"{where}: invalid JSON: {e}") from None
        values.append(value)
        pos = _SEPARATOR.match(body, pos).end()  # type: ignore[union-attr]  # matches the empty string too
    return values


def _python_calls(body: str, where: str) -> list[ToolCall]:
    try:
        return [ToolCall(name, args) for name, args in parse_python_calls(body)]
    except PyCallError as e:
        raise _Bad(f"{where}: {e}") from None


def _calls_from_body(body: str, where: str) -> list[ToolCall]:
    """A block that should hold only calls: JSON value(s), or Python call syntax when it starts like `f(` / `[f(`."""
    body = body.strip()
    if looks_like_python_calls(body):
        return _python_calls(body, where)
    calls: list[ToolCall] = []
    for value in _json_values(body, where):
        calls += _calls_from_value(value, where)
    return calls


def _mistral_calls(text: str) -> list[ToolCall]:
    """`[TOOL_CALLS] [{...}]` (Mistral v3 tokenizers) or `[TOOL_CALLS]name[ARGS]{...}` repeated (v11+)."""
    calls: list[ToolCall] = []
    segments = text.split(_MISTRAL_CALLS)[1:]  # what precedes the first marker is prose
    for i, segment in enumerate(segments):
        where = f"[TOOL_CALLS] block #{i + 1}"
        if _MISTRAL_ARGS not in segment:
            if segment.strip():
                calls += _calls_from_body(segment, where)
            continue
        head, _, args_text = segment.partition(_MISTRAL_ARGS)
        name = head.partition(_MISTRAL_ID)[0].strip()
        if not name:
            raise _Bad(f"{where} has no function name before [ARGS]")
        values = _json_values(args_text.strip(), f"arguments of {_clip(name)}") if args_text.strip() else [{}]
        if len(values) != 1 or not isinstance(values[0], dict):
            raise _Bad(f"arguments of {_clip(name)} must be one JSON object")
        calls.append(ToolCall(name, values[0]))
    return calls


def _strip_trailing_markers(text: str) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in _TRAILING_MARKERS:
            if text.endswith(marker):
                text, changed = text[: -len(marker)].rstrip(), True
    return text


def _parse(text: str) -> list[ToolCall]:
    # Reasoning models think before they answer; calls drafted while thinking are not the answer.
    think_end = text.rfind(_THINK_CLOSE)
    if think_end >= 0:
        text = text[think_end + len(_THINK_CLOSE):]
    text = _strip_trailing_markers(text)
    if _TAG_OPEN in text:
        calls: list[ToolCall] = []
        for i, body in enumerate(_tag_blocks(text)):
            body = _strip_fence(body).strip()
            if not body:
                raise _Bad(f"<tool_call> block #{i + 1} is empty")
            calls += _calls_from_body(body, f"<tool_call> block #{i + 1}")
        return calls
    if _MISTRAL_CALLS in text:
        return _mistral_calls(text)
    if _PYTHON_TAG in text:
        calls = []
        for i, body in enumerate(text.split(_PYTHON_TAG)[1:]):
            if body.strip():
                calls += _calls_from_body(body, f"<|python_tag|> block #{i + 1}")
        return calls
    fences = [m for m in _FENCE.finditer(text) if m.group(1).lower() in _CALL_FENCES]
    if fences:
        calls = []
        for i, m in enumerate(fences):
            if m.group(2).strip():
                calls += _calls_from_body(m.group(2), f"code block #{i + 1}")
        return calls
    stripped = text.strip()
    if (stripped[:1] in ("[", "{") and stripped[-1:] in ("]", "}")) or looks_like_python_calls(stripped):
        return _calls_from_body(stripped, "the answer")
    calls = []
    for value in _scan_json_values(text):
        if _looks_like_call(value):
            calls += _calls_from_value(value, "the answer")
    if not calls:
        try:
            calls = [ToolCall(name, args) for name, args in find_python_call_lists(text)]
        except PyCallError as e:
            raise _Bad(f"the answer: {e}") from None
    return calls


def parse_tool_calls(text: str, max_chars: int = MAX_TEXT_CHARS) -> ParsedCalls:
    """The tool calls in a model's text. Never raises; a text with no calls gives zero calls, not an error.

    Errors (error != "") mean the text tried to call tools and got it wrong:
    malformed JSON inside a tag or fence, a call without a name, non-object
    arguments, or a text over `max_chars`.
    """
    if not isinstance(text, str):
        return ParsedCalls(error=f"expected text, got {type(text).__name__}")
    if len(text) > max_chars:
        return ParsedCalls(error=f"answer too long ({len(text)} characters, limit {max_chars})")
    try:
        return ParsedCalls(tuple(_parse(text)))
    except _Bad as e:
        return ParsedCalls(error=str(e))


# ------------------------------------------------------------------- comparison
def values_equal(a: Any, b: Any) -> bool:
    """JSON deep equality for argument values: 1 == 1.0, but True != 1; strings exact; lists ordered."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return False


def calls_equal(a: ToolCall, b: ToolCall) -> bool:
    return a.name == b.name and values_equal(a.arguments, b.arguments)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_call(call: ToolCall, limit: int = 160) -> str:
    """get_weather(city='Paris', unit='celsius'), shortened for a reason string."""
    args = ", ".join(f"{_clip(k, 30)}={_short(v)}" for k, v in list(call.arguments.items())[:8])
    text = f"{_clip(call.name)}({args})"
    return text if len(text) <= limit else text[: limit - 4] + "...)"


def _argument_differences(gold: ToolCall, got: ToolCall) -> list[str]:
    diffs: list[str] = []
    for k, v in gold.arguments.items():
        if k not in got.arguments:
            diffs.append(f"argument {_short(k)} of {gold.name}: missing (expected {_short(v)})")
        elif not values_equal(v, got.arguments[k]):
            diffs.append(f"argument {_short(k)} of {gold.name}: expected {_short(v)}, got {_short(got.arguments[k])}")
    for k, v in got.arguments.items():
        if k not in gold.arguments:
            diffs.append(f"argument {_short(k)} of {gold.name}: unexpected (got {_short(v)})")
    return diffs


def _argument_class(gold: ToolCall, got: ToolCall) -> str:
    if any(k not in got.arguments for k in gold.arguments):
        return MISSING_ARGUMENT
    if any(k not in gold.arguments for k in got.arguments):
        return UNEXPECTED_ARGUMENT
    return WRONG_ARGUMENT_VALUE


_ARGUMENT_ORDER = (MISSING_ARGUMENT, UNEXPECTED_ARGUMENT, WRONG_ARGUMENT_VALUE)


def compare_calls(gold: Iterable[ToolCall], predicted: Iterable[ToolCall]) -> Verdict:
    """Pass iff the two multisets of calls are equal (order ignored); the reason lists what differed.

    The failure class is the most structural difference: a missing call of one function next to
    an extra call of another is wrong_function; else missing_call, extra_call; else, within the
    calls paired by name, missing_argument, unexpected_argument, wrong_argument_value.
    """
    missing = list(gold)
    extra = list(predicted)
    n_gold = len(missing)
    unmatched: list[ToolCall] = []
    for g in missing:
        j = next((j for j, p in enumerate(extra) if calls_equal(g, p)), None)
        if j is None:
            unmatched.append(g)
        else:
            del extra[j]
    missing = unmatched
    if not missing and not extra:
        return Verdict(True, f"all {n_gold} call(s) match")
    problems: list[str] = []
    # A missing and an extra call with the same name are one call with wrong arguments.
    still_missing: list[ToolCall] = []
    argument_classes: set[str] = set()
    for g in missing:
        same_name = [j for j, p in enumerate(extra) if p.name == g.name]
        if not same_name:
            still_missing.append(g)
            continue
        best = min(same_name, key=lambda j: len(_argument_differences(g, extra[j])))
        paired = extra.pop(best)
        problems += _argument_differences(g, paired)
        argument_classes.add(_argument_class(g, paired))
    problems += [f"missing call {format_call(g)}" for g in still_missing]
    problems += [f"extra call {format_call(p)}" for p in extra]
    shown = problems[:MAX_REASON_ITEMS]
    if len(problems) > len(shown):
        shown.append(f"and {len(problems) - len(shown)} more difference(s)")
    if still_missing and extra:
        failure_class = WRONG_FUNCTION
    elif still_missing:
        failure_class = MISSING_CALL
    elif extra:
        failure_class = EXTRA_CALL
    else:
        failure_class = next(c for c in _ARGUMENT_ORDER if c in argument_classes)
    return Verdict(False, "; ".join(shown), failure_class)
