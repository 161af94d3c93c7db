"""BFCL's AST checker for Python single-turn categories, re-implemented so that a verdict matches BFCL's.

The rules follow `bfcl_eval/eval_checker/ast_eval/ast_checker.py` (bfcl-eval
2026.3.23) for language Python, so per-category accuracy here can be compared
with the BFCL leaderboard:

- simple: exactly one call; multiple: as many calls as answers (one), checked
  against the expected function; parallel and parallel_multiple: as many calls as
  answers, each answer matched to a distinct call in any order (first match wins).
- A call matches when its name is the function's (or the name with '.' written
  as '_', as BFCL's OpenAI-style handlers send it), every required parameter is
  present, no parameter is unknown or absent from the possible answers, every
  value has the declared type (an int is accepted for a float) and is one of the
  possible values, and every parameter left out lists "" among its possible
  values (BFCL's mark for "optional, may be omitted").
- Strings, and strings inside lists and dicts, compare after BFCL's
  standardisation: lower case, without spaces and ,./-_*^, with ' read as ".

The original raises on malformed function docs; here a verdict is always returned
(the task validates the data when it loads it). Reasons start with BFCL's
error_type (e.g. "value_error:string") so that they can be tallied like BFCL's, and a failed
verdict's failure class is that error_type (`ERROR_TYPES` lists them all).
"""

from __future__ import annotations

import re
from typing import Any

from r3rl.tasks.fc_parse import ToolCall
from r3rl.types import Verdict

__all__ = ["check_calls", "checker_kind", "standardize_string", "ERROR_TYPES", "DECODER_FAILED"]

DECODER_FAILED = "ast_decoder:decoder_failed"
#: every error_type a failed verdict can carry (its failure class), with BFCL's names and what each means
ERROR_TYPES: dict[str, str] = {
    DECODER_FAILED: "the completion's tool calls could not be parsed",
    "simple_function_checker:wrong_count": "simple category: not exactly one call",
    "multiple_function_checker:wrong_count": "multiple category: not as many calls as answers (one)",
    "parallel_function_checker_no_order:wrong_count": "parallel categories: not as many calls as answers",
    "parallel_function_checker_no_order:cannot_find_match": "parallel categories: no remaining call fits an answer "
                                                            "(the reason quotes the first difference)",
    "simple_function_checker:wrong_func_name": "the call names another function than the expected one",
    "simple_function_checker:missing_required": "a parameter the function requires is absent",
    "simple_function_checker:unexpected_param": "a parameter that is not the function's or not in the answer",
    "simple_function_checker:missing_optional": "a parameter left out that the answer does not mark as optional",
    "type_error:simple": "a value of the wrong type",
    "type_error:nested": "a list (or list of dicts) whose items have the wrong type",
    "value_error:string": "a string that is none of the possible values (after BFCL's standardisation)",
    "value_error:list/tuple": "a list that is none of the possible values",
    "value_error:dict_key": "a dict with a key the answer does not have, or without one it needs",
    "value_error:dict_value": "a dict whose value for a key is none of the possible values",
    "value_error:list_dict_count": "a list of dicts of another length than the possible answers",
    "value_error:others": "a number, boolean or other value that is none of the possible values",
    "dict_checker:unclear": "a dict parameter whose possible answers hold no dict to compare with",
    "list_dict_checker:unclear": "a list-of-dicts parameter with no possible answer to compare with",
}
# BFCL's checker function per kind of category; its name prefixes the wrong_count error type.
_CHECKERS = {"simple": "simple_function_checker", "multiple": "multiple_function_checker",
             "parallel": "parallel_function_checker_no_order"}

# BFCL's PYTHON_TYPE_MAPPING
_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list,
                              "tuple": list, "dict": dict, "any": str}
_NESTED = ("array", "tuple")
_STANDARDIZE = re.compile(r"[ \,\.\/\-\_\*\^]")


class _Mismatch(Exception):
    """One reason a call does not match an answer: (error_type, message)."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type, self.message = error_type, message


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def standardize_string(text: str) -> str:
    """BFCL's standardize_string: 'April 1, 2024' and 'april 1 2024' compare equal."""
    return _STANDARDIZE.sub("", text).lower().replace("'", '"')


def _possible_type(possible: list[Any]) -> type | None:
    for answer in possible:
        if answer != "":
            return type(answer)
    return None


def _type_check(param: str, value: Any, possible: list[Any], type_desc: str, expected: type,
                nested: type | None) -> bool:
    """BFCL's type_checker; returns is_variable, raises _Mismatch on a wrong type."""
    possible_type = _possible_type(possible)
    # A possible answer of another type than the declared one is a variable name written as a string.
    is_variable = possible_type is not None and possible_type != expected
    if type(value) is expected:
        if nested is None:
            return is_variable
        for item in possible:
            if not isinstance(item, list):
                return is_variable
            try:
                for value_item in value:
                    _type_check(param, value_item, item, nested.__name__, nested, None)
                return is_variable
            except _Mismatch:
                continue
        raise _Mismatch("type_error:nested", f"Nested type checking failed for parameter {_short(param)}. Expected "
                        f"outer type {type_desc} with inner type {nested.__name__}. Parameter value: {_short(value)}.")
    if possible_type is not None and type(value) is possible_type:
        return True
    raise _Mismatch("type_error:simple", f"Incorrect type for parameter {_short(param)}. Expected type {type_desc}, "
                    f"got {type(value).__name__}. Parameter value: {_short(value)}.")


def _standardized(values: list[Any]) -> list[Any]:
    return [standardize_string(v) if isinstance(v, str) else v for v in values]


def _check_string(param: str, value: str, possible: list[Any]) -> None:
    if standardize_string(value) not in [standardize_string(p) for p in possible if isinstance(p, str)]:
        raise _Mismatch("value_error:string", f"Invalid value for parameter {_short(param)}: {_short(value)}. "
                        f"Expected one of {_short(possible, 160)}. Case insensitive.")


def _check_list(param: str, value: list[Any], possible: list[Any]) -> None:
    # BFCL standardises each option item by item, so the optional mark "" becomes [] and matches an empty list.
    options = [_standardized(list(p)) for p in possible if isinstance(p, (list, str))]
    if _standardized(value) not in options:
        raise _Mismatch("value_error:list/tuple", f"Invalid value for parameter {_short(param)}: {_short(value)}. "
                        f"Expected one of {_short(possible, 160)}.")


def _check_dict(param: str, value: dict[str, Any], possible: list[Any]) -> None:
    """BFCL's dict_checker: the value must fit one of the possible dicts (each key's value one of its options)."""
    last = _Mismatch("dict_checker:unclear", f"No possible value for parameter {_short(param)}.")
    for answer in possible:
        if answer == "" or not isinstance(answer, dict):
            continue
        try:
            for key, item in value.items():
                if key not in answer:
                    raise _Mismatch("value_error:dict_key", f"Unexpected dict key parameter: {_short(key)}.")
                options = _standardized(answer[key]) if isinstance(answer[key], list) else [answer[key]]
                got = standardize_string(item) if isinstance(item, str) else item
                if got not in options:
                    raise _Mismatch("value_error:dict_value", f"Invalid value for parameter {_short(key)}: "
                                    f"{_short(item)}. Expected one of {_short(options, 160)}.")
            for key, options in answer.items():
                if key not in value and not (isinstance(options, list) and "" in options):
                    raise _Mismatch("value_error:dict_key", f"Missing dict key parameter: {_short(key)}.")
            return
        except _Mismatch as e:
            last = e
    raise last


def _check_list_of_dicts(param: str, value: list[Any], possible: list[Any]) -> None:
    last = _Mismatch("list_dict_checker:unclear", f"No possible value for parameter {_short(param)}.")
    for answer in possible:
        if not isinstance(answer, list) or len(answer) != len(value):
            last = _Mismatch("value_error:list_dict_count", "Wrong number of dictionaries in the list.")
            continue
        try:
            for item, expected in zip(value, answer):
                if not isinstance(item, dict):
                    raise _Mismatch("type_error:nested", f"Parameter {_short(param)} must be a list of dicts.")
                _check_dict(param, item, [expected])
            return
        except _Mismatch as e:
            last = e
    raise last


def names_match(expected: str, got: str) -> bool:
    """BFCL converts 'a.b' to 'a_b' for models whose tool names cannot hold dots; both spellings are accepted."""
    return got == expected or ("." in expected and got == expected.replace(".", "_"))


def _check_one(function: dict[str, Any], call: ToolCall, answer: dict[str, dict[str, list[Any]]]) -> None:
    """BFCL's simple_function_checker: raises _Mismatch when `call` does not fit `answer`."""
    name, possible_args = next(iter(answer.items()))
    params = function.get("parameters") or {}
    details: dict[str, Any] = params.get("properties") or {}
    if not names_match(name, call.name):
        raise _Mismatch("simple_function_checker:wrong_func_name",
                        f"Function name {_short(name)} not found in model output (got {_short(call.name)}).")
    for param in params.get("required") or []:
        if param not in call.arguments:
            raise _Mismatch("simple_function_checker:missing_required", f"Missing required parameter: {_short(param)}.")
    for param, value in call.arguments.items():
        if param not in details or param not in possible_args:
            raise _Mismatch("simple_function_checker:unexpected_param", f"Unexpected parameter: {_short(param)}.")
        possible = possible_args[param]
        type_desc = str((details[param] or {}).get("type", ""))
        expected = _PY_TYPES.get(type_desc)
        nested = None
        if type_desc in _NESTED:
            nested = _PY_TYPES.get(str(((details[param] or {}).get("items") or {}).get("type", "")))
        if type_desc == "float" and type(value) is int:
            value = float(value)  # Python would accept an int where a float is declared
        is_variable = False
        if expected is not None:
            is_variable = _type_check(param, value, possible, type_desc, expected, nested)
        if not is_variable:
            if expected is dict:
                _check_dict(param, value, possible)
                continue
            if expected is list and nested is dict:
                _check_list_of_dicts(param, value, possible)
                continue
            if expected is str:
                _check_string(param, value, possible)
                continue
            if expected is list:
                _check_list(param, value, possible)
                continue
        if value not in possible:
            raise _Mismatch("value_error:others", f"Invalid value for parameter {_short(param)}: {_short(value)}. "
                            f"Expected one of {_short(possible, 160)}.")
    for param, possible in possible_args.items():
        if param not in call.arguments and "" not in possible:
            raise _Mismatch("simple_function_checker:missing_optional",
                            f"Optional parameter {_short(param)} not provided and not marked as optional.")


def checker_kind(category: str) -> str:
    """Which BFCL checker a category uses: "parallel", "multiple" or "simple" (the same test as BFCL's)."""
    return "parallel" if "parallel" in category else "multiple" if "multiple" in category else "simple"


def _find(functions: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((f for f in functions if f.get("name") == name), {})


def check_calls(category: str, functions: list[dict[str, Any]], answers: list[dict[str, Any]],
                calls: list[ToolCall] | tuple[ToolCall, ...]) -> Verdict:
    """BFCL's ast_checker for one example: do the model's `calls` fit the possible `answers`?"""
    calls = list(calls)
    kind = checker_kind(category)
    try:
        if kind == "simple" and len(calls) != 1:
            raise _Mismatch("simple_function_checker:wrong_count",
                            f"Wrong number of functions: expected 1 call, got {len(calls)}.")
        if len(calls) != len(answers):
            raise _Mismatch(f"{_CHECKERS[kind]}:wrong_count",
                            f"Wrong number of functions: expected {len(answers)} calls, got {len(calls)}.")
        if kind != "parallel":
            _check_one(_find(functions, next(iter(answers[0]))), calls[0], answers[0])
            return Verdict(True, "all calls match BFCL's possible answers")
        matched: set[int] = set()
        for i, answer in enumerate(answers):
            name = next(iter(answer))
            first_error: _Mismatch | None = None
            for index, call in enumerate(calls):
                if index in matched:
                    continue
                try:
                    _check_one(_find(functions, name), call, answer)
                except _Mismatch as e:
                    # Report a call of the right function if there is one: its difference says more.
                    if first_error is None or first_error.error_type.endswith("wrong_func_name"):
                        first_error = e
                    continue
                matched.add(index)
                break
            else:
                why = f" First difference: {first_error.error_type}: {first_error.message}" if first_error else ""
                raise _Mismatch("parallel_function_checker_no_order:cannot_find_match",
                                f"No call matches possible answer #{i + 1} ({_short(name)}).{why}")
    except _Mismatch as e:
        return Verdict(False, f"{e.error_type}: {e.message}", e.error_type)
    return Verdict(True, "all calls match BFCL's possible answers")
