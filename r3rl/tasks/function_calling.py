"""Function calling (APIGen / xLAM): answer a query with the exact tool calls of the gold answer.

One of the paper's two tasks. An example is

    {"query": str, "tools": [...], "answers": [{"name": str, "arguments": {...}}]}

where `tools` and `answers` may be JSON strings (as in xlam-function-calling-60k).
Tools may be xLAM style (`parameters: {arg: {type, description, default}}`) or
JSON-schema / OpenAI style (`parameters: {type: object, properties, required}`,
optionally wrapped in `{"type": "function", "function": {...}}`); `tools()` always
returns the OpenAI form, which chat templates (`tools=`) expect.

A completion passes when its multiset of calls equals the gold multiset exactly
(order ignored; see `r3rl.tasks.fc_parse` for the accepted formats and the
equality rules), which is the paper's exact-match criterion.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

from r3rl.errors import InputError
from r3rl.tasks.base import Example, Task
from r3rl.tasks.data import load_records, row_error, split_examples
from r3rl.tasks.fc_parse import ToolCall, compare_calls, parse_tool_calls
from r3rl.types import Verdict

__all__ = ["FunctionCallingTask", "normalize_tool", "normalize_tools", "normalize_example", "SYSTEM_PROMPT"]

SYSTEM_PROMPT = (
    "You are an expert in composing function calls. You are given a question and a set of tools. "
    "Answer the question by calling the tools with the right arguments. If several calls are needed, "
    "make all of them. Reply with the tool calls only, in the format the tool instructions ask for, "
    "with no other text."
)

# xLAM (Python-flavoured) type names -> JSON-schema types.
_SIMPLE_TYPES = {
    "str": "string", "string": "string", "text": "string",
    "int": "integer", "integer": "integer", "long": "integer",
    "float": "number", "number": "number", "double": "number", "decimal": "number",
    "bool": "boolean", "boolean": "boolean",
    "list": "array", "array": "array", "tuple": "array", "set": "array", "sequence": "array",
    "dict": "object", "object": "object", "mapping": "object", "map": "object",
    "null": "null", "none": "null",
}
_GENERIC = re.compile(r"^([\w.]+)\s*\[(.*)\]$", re.DOTALL)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: "Dict[str, int], optional" -> ["Dict[str, int]", "optional"]."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return parts


def _xlam_type(text: str) -> tuple[dict[str, Any], bool, bool]:
    """xLAM type text -> (JSON-schema fragment, optional?, mapped exactly?).

    "str, optional" -> ({"type": "string"}, True, True); "List[int]" ->
    ({"type": "array", "items": {"type": "integer"}}, False, True). Types with no
    clear JSON-schema form (Union[str, int], Callable, datetime) give {} and
    exact=False, so the caller keeps the original text in the description.
    """
    head, *qualifiers = _split_top_level(text.strip())
    optional = any(q.lower().startswith(("optional", "default")) for q in qualifiers)
    exact_qualifiers = all(q.lower().startswith(("optional", "default")) for q in qualifiers)
    m = _GENERIC.match(head)
    if m:
        outer, args = m.group(1).lower(), _split_top_level(m.group(2))
        base = _SIMPLE_TYPES.get(outer)
        if outer == "optional" and len(args) == 1:
            schema, _, exact = _xlam_type(args[0])
            return schema, True, exact and exact_qualifiers
        if base == "array":
            if len(args) == 1 or outer == "tuple" and len(set(args)) == 1:
                items, _, exact = _xlam_type(args[0])
                if items:
                    return {"type": "array", "items": items}, optional, exact and exact_qualifiers
            return {"type": "array"}, optional, False
        if base == "object":
            return {"type": "object"}, optional, exact_qualifiers
        if outer == "union" and {_SIMPLE_TYPES.get(a.lower()) for a in args} <= {"integer", "number"}:
            return {"type": "number"}, optional, exact_qualifiers
        return {}, optional, False
    base = _SIMPLE_TYPES.get(head.lower())
    if base is None:
        return {}, optional, False
    return {"type": base}, optional, exact_qualifiers


def _from_xlam_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """xLAM `{arg: {type, description, default}}` -> JSON schema `{type: object, properties, required}`.

    An argument is optional when it has a "default" or its type says "optional".
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for arg, spec in params.items():
        if not isinstance(spec, dict):
            spec = {"description": str(spec)}
        type_text = spec.get("type")
        schema: dict[str, Any] = {}
        optional = "default" in spec
        description = str(spec.get("description", "") or "")
        if isinstance(type_text, str) and type_text.strip():
            mapped, type_optional, exact = _xlam_type(type_text)
            schema.update(mapped)
            optional = optional or type_optional
            if not exact:
                description = f"{description} (type: {type_text})".strip()
        if description:
            schema["description"] = description
        if "default" in spec:
            schema["default"] = spec["default"]
        if "enum" in spec:
            schema["enum"] = spec["enum"]
        properties[str(arg)] = schema
        if not optional:
            required.append(str(arg))
    return {"type": "object", "properties": properties, "required": required}


_SCHEMA_KEYS = {"type", "properties", "required", "additionalProperties", "description", "$schema", "title",
                "definitions", "$defs"}


def _is_json_schema(params: dict[str, Any]) -> bool:
    """JSON-schema parameters vs xLAM ones. An xLAM tool may have an argument named "properties" or
    "type", so the shape decides: a schema's "properties" maps names to objects and its "type" is a string."""
    if params.get("type") == "object":
        return True
    props = params.get("properties")
    return (
        isinstance(props, dict) and set(params) <= _SCHEMA_KEYS
        and all(isinstance(v, dict) for v in props.values())
        and not isinstance(params.get("type"), dict)
    )


def _decode_field(value: Any, field: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"field {field!r} is a string but not valid JSON: {e.msg} (column {e.colno})") from None
    return value


def normalize_tool(tool: Any) -> dict[str, Any]:
    """One tool in any accepted style -> `{"type": "function", "function": {name, description, parameters}}`.

    Idempotent: an already normalised tool comes back equal. Raises ValueError on
    a tool with no name.
    """
    tool = _decode_field(tool, "tools")
    if not isinstance(tool, dict):
        raise ValueError(f"a tool must be an object, got {type(tool).__name__}")
    fn = tool["function"] if isinstance(tool.get("function"), dict) else tool
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tool has no 'name': {tool!r}"[:160])
    params = fn.get("parameters")
    params = _decode_field(params, f"parameters of {name}") if params is not None else {}
    if not isinstance(params, dict):
        raise ValueError(f"parameters of tool {name!r} must be an object, got {type(params).__name__}")
    # Parquet stores objects as structs with the union of all rows' keys, so absent
    # entries come back as None; they are not arguments.
    params = {k: v for k, v in params.items() if v is not None}
    if _is_json_schema(params):
        schema = dict(params)
        schema["type"] = "object"
        schema["properties"] = {k: v for k, v in (schema.get("properties") or {}).items() if v is not None}
        schema["required"] = list(schema.get("required") or [])
    else:
        schema = _from_xlam_parameters(params)
    return {"type": "function",
            "function": {"name": name, "description": str(fn.get("description", "") or ""), "parameters": schema}}


def normalize_tools(tools: Any) -> list[dict[str, Any]]:
    """A list of tools (or a JSON string of one, or a single tool) -> OpenAI-style tools."""
    return [normalize_tool(t) for t in _as_list(tools, "tools", "a list")]


def _as_list(value: Any, field: str, what: str) -> list[Any]:
    """A field that may be a JSON string, one object, or a list of them -> the list."""
    value = _decode_field(value, field)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"field '{field}' must be {what}, got {type(value).__name__}")
    return value


def _normalize_answers(answers: Any) -> list[dict[str, Any]]:
    answers = _as_list(answers, "answers", "a list of calls")
    out = []
    for i, call in enumerate(answers):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError(f"answer #{i + 1} must be an object with a 'name' string, got {call!r}"[:200])
        args = _decode_field(call.get("arguments", {}), f"arguments of answer #{i + 1}")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ValueError(f"arguments of answer #{i + 1} ({call['name']}) must be an object, got {args!r}"[:200])
        out.append({"name": call["name"], "arguments": args})
    return out


def normalize_example(row: dict[str, Any]) -> Example:
    """A row with decoded `answers` and OpenAI-style `tools`. Raises ValueError naming the bad field."""
    for field in ("query", "tools", "answers"):
        if field not in row:
            raise ValueError(f"missing field {field!r} (row has {sorted(row)})")
    if not isinstance(row["query"], str) or not row["query"].strip():
        raise ValueError(f"field 'query' must be a non-empty string, got {row['query']!r}"[:200])
    example: Example = {"query": row["query"], "tools": normalize_tools(row["tools"]),
                        "answers": _normalize_answers(row["answers"])}
    if row.get("id") is not None:
        example["id"] = str(row["id"])
    return example


def _validate_rows(rows: list[dict[str, Any]], source: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(normalize_example(row))
        except ValueError as e:
            raise row_error(source, i, str(e)) from None
    return out


def _warn_if_arrow_objects(rows: list[dict[str, Any]], source: str) -> None:
    """Parquet and hub datasets store objects as Arrow structs that share one set of keys across
    rows, so a call's absent arguments come back as null and exact match fails. JSON strings (as
    in the published xLAM data) survive; say so rather than silently failing every answer."""
    if source.lower().endswith((".json", ".jsonl")):
        return
    if any(not isinstance(r.get("answers"), str) for r in rows):
        warnings.warn(
            f"{source}: 'answers' are stored as objects, not JSON strings; in Parquet/Arrow data absent "
            "arguments come back as null and will not match the model's calls. Store 'tools' and "
            "'answers' as JSON strings, or use a .json/.jsonl file.",
            stacklevel=3,
        )


class FunctionCallingTask(Task):
    """xLAM / APIGen function calling with exact-match verification.

    Options:
        path: JSON/JSONL/Parquet file or HF dataset id (e.g.
            Salesforce/xlam-function-calling-60k). None: the built-in offline
            sample of 20 examples (r3rl.tasks.fc_sample), for demos and tests.
            In Parquet/hub data keep `tools` and `answers` as JSON strings
            (Arrow structs turn absent keys into nulls; a warning says so).
        test_path: a separate test source; without it the test split is a
            deterministic held-out `test_fraction` of `path`, split by query so
            that no query is in both splits.
        test_fraction: share of distinct queries held out as the test split.
    """

    name = "function_calling"
    system_prompt = SYSTEM_PROMPT

    def __init__(self, path: str | None = None, test_path: str | None = None, test_fraction: float = 0.1):
        if not 0.0 < test_fraction < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if test_path is not None and path is None:
            raise InputError("test_path needs path (the train data) too")
        self.path, self.test_path, self.test_fraction = path, test_path, float(test_fraction)
        self._cache: dict[str, list[Example]] = {}

    # ----------------------------------------------------------------- examples
    def _source(self, source: str | None) -> list[Example]:
        key = source or "<built-in sample>"
        if key not in self._cache:
            if source is None:
                from r3rl.tasks.fc_sample import SAMPLE

                self._cache[key] = _validate_rows(SAMPLE, "r3rl.tasks.fc_sample")
            else:
                rows = load_records(source)
                _warn_if_arrow_objects(rows, str(source))
                self._cache[key] = _validate_rows(rows, str(source))
        return self._cache[key]

    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        return split_examples(split, n, seed, self._source, self.path, self.test_path, self.test_fraction,
                              key=lambda ex: ex["query"])

    # ------------------------------------------------------------------- prompt
    def prompt(self, example: Example) -> str:
        return example["query"]

    def tools(self, example: Example) -> list[dict[str, Any]]:
        return normalize_tools(example["tools"])

    # ------------------------------------------------------------------- verify
    def verify(self, example: Example, completion: str) -> Verdict:
        """Pass iff the calls in the completion equal the gold calls as a multiset."""
        parsed = parse_tool_calls(completion)
        if not parsed.ok:
            return Verdict(False, f"could not parse tool calls: {parsed.error}")
        # A malformed gold answer is a data bug, not a model failure: let it raise.
        gold = [ToolCall(a["name"], a["arguments"]) for a in _normalize_answers(example["answers"])]
        if gold and not parsed.calls:
            return Verdict(False, "no tool calls found; " + compare_calls(gold, []).reason)
        return compare_calls(gold, parsed.calls)

