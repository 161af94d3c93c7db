"""BFCL (Berkeley Function Calling Leaderboard): the single-turn AST categories as an r3rl task.

    r3rl eval task.name=bfcl                                   # all eight categories
    r3rl eval task.name=bfcl task.options.categories=simple,live_simple

Categories (BFCL's names): simple (BFCL's simple_python file), multiple, parallel,
parallel_multiple, and live_simple, live_multiple, live_parallel,
live_parallel_multiple. Rows come from the data files of the `bfcl-eval` package
(install it without its many API-client dependencies: `pip install --no-deps
bfcl-eval==2026.3.23`), or from `task.options.path`, a folder laid out like the
package's `data/` (BFCL_v<N>_<category>.json and possible_answer/ beside it).

A completion is parsed by `r3rl.tasks.fc_parse` (JSON, tags, Python call syntax,
...; tools are offered through the chat template) and judged by BFCL's AST rules
(`r3rl.tasks.bfcl_ast`): any listed possible value is accepted, and a parameter
may be left out where its possible values include "". `breakdown` gives each
example's category, so `r3rl eval` reports accuracy per category, and
`summarize` adds BFCL's summary scores: the Non-Live AST summary (unweighted mean
of the four non-live categories) and the Live AST summary (mean weighted by
category size). BFCL's Non-Live "simple" also averages Java and JavaScript
rows; those need BFCL's language type converters and are not included, so the
Non-Live summary here uses Python simple only.

BFCL is an evaluation benchmark: all rows are in the "test" split. Set
`test_fraction` to hold out that share (by id) and train on the rest.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from r3rl.errors import InputError
from r3rl.tasks.base import Example, Message, Task, group_accuracy
from r3rl.tasks.bfcl_ast import DECODER_FAILED, ERROR_TYPES, check_calls
from r3rl.tasks.data import DataError, holdout_split, sample
from r3rl.tasks.fc_parse import parse_tool_calls
from r3rl.tasks.function_calling import SYSTEM_PROMPT
from r3rl.types import Verdict

__all__ = ["BFCLTask", "CATEGORIES", "BFCL_EVAL_VERSION", "bfcl_data_dir", "category_accuracy", "to_openai_tool"]

BFCL_EVAL_VERSION = "2026.3.23"  # the release whose data and checker this task was written against
NON_LIVE = ("simple", "multiple", "parallel", "parallel_multiple")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
CATEGORIES = NON_LIVE + LIVE
_FILE_NAMES = {"simple": "simple_python"}  # BFCL category -> the name in its data files
_INSTALL_HINT = (f"install BFCL's data with `pip install --no-deps bfcl-eval=={BFCL_EVAL_VERSION}`, or set "
                 "task.options.path to a folder holding BFCL_v<N>_<category>.json files and possible_answer/")

# BFCL's GORILLA_TO_OPENAPI type names, for the tool schemas shown to the model.
_OPENAPI_TYPES = {"integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
                  "bool": "boolean", "array": "array", "list": "array", "dict": "object", "object": "object",
                  "tuple": "array", "any": "string"}


def bfcl_data_dir(path: str | Path | None = None) -> Path:
    """The folder of BFCL's data files: `path`, else the installed bfcl-eval package's data/ (never imported)."""
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataError(f"BFCL data folder {folder} does not exist; {_INSTALL_HINT}")
        return folder
    spec = importlib.util.find_spec("bfcl_eval")  # locates the package without running its heavy __init__
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the bfcl-eval package is not installed; {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _category_file(folder: Path, category: str) -> Path:
    """BFCL_v<N>_<name>.json with the highest N (file names carry BFCL's version)."""
    name = _FILE_NAMES.get(category, category)
    pattern = re.compile(rf"BFCL_v(\d+)_{re.escape(name)}\.json")
    found = sorted((int(m.group(1)), p) for p in folder.glob("BFCL_v*.json") if (m := pattern.fullmatch(p.name)))
    if not found:
        raise DataError(f"no BFCL_v<N>_{name}.json in {folder}; {_INSTALL_HINT}")
    return found[-1][1]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON on line {lineno} of {path}: {e.msg} (column {e.colno})") from None
            if not isinstance(row, dict) or "id" not in row:
                raise DataError(f"line {lineno} of {path}: expected a JSON object with an 'id'")
            rows.append(row)
    return rows


def _example(row: dict[str, Any], answer: dict[str, Any] | None, category: str, where: str) -> Example:
    """A validated example; errors name the file line's id and the field."""
    rid = row["id"]

    def bad(message: str) -> DataError:
        return DataError(f"{where}, id {rid}: {message}")

    question = row.get("question")
    if not (isinstance(question, list) and len(question) == 1 and isinstance(question[0], list) and question[0]):
        raise bad("'question' must hold exactly one turn (a non-empty list of messages)")
    for m in question[0]:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise bad("every message needs a 'role' and a 'content' string")
    functions = row.get("function")
    if not isinstance(functions, list) or not functions:
        raise bad("'function' must be a non-empty list of function docs")
    for fn in functions:
        if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)
                and isinstance((fn.get("parameters") or {}).get("properties", {}), dict)):
            raise bad("every function needs a 'name' and 'parameters' with 'properties'")
    if answer is None:
        raise bad("no possible answer with this id")
    truth = answer.get("ground_truth")
    if not isinstance(truth, list) or not truth:
        raise bad("'ground_truth' must be a non-empty list")
    names = {fn["name"] for fn in functions}
    for call in truth:
        if not (isinstance(call, dict) and len(call) == 1 and isinstance(next(iter(call.values())), dict)):
            raise bad("each ground-truth call must be {function_name: {parameter: [possible values]}}")
        name, params = next(iter(call.items()))
        if name not in names:
            raise bad(f"ground-truth function {name!r} is not among the functions offered")
        if not all(isinstance(v, list) for v in params.values()):
            raise bad(f"possible values of {name!r} must be lists")
    return {"id": str(rid), "category": category, "messages": question[0], "functions": functions,
            "ground_truth": truth}


def load_category(folder: Path, category: str) -> list[Example]:
    questions = _category_file(folder, category)
    answers_path = questions.parent / "possible_answer" / questions.name
    if not answers_path.is_file():
        raise DataError(f"{answers_path} is missing (BFCL keeps possible answers in possible_answer/)")
    answers = {str(a["id"]): a for a in _read_jsonl(answers_path)}
    return [_example(row, answers.get(str(row["id"])), category, str(questions)) for row in _read_jsonl(questions)]


def _openapi_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """BFCL's _cast_to_openai_type: BFCL type names -> JSON-schema ones, through properties and items."""
    out = {}
    for key, schema in properties.items():
        schema = dict(schema) if isinstance(schema, dict) else {}
        schema["type"] = _OPENAPI_TYPES.get(str(schema.get("type", "string")), "string")
        if isinstance(schema.get("properties"), dict):
            schema["properties"] = _openapi_properties(schema["properties"])
        if isinstance(schema.get("items"), dict):
            schema["items"] = _openapi_properties({"item": schema["items"]})["item"]
        out[key] = schema
    return out


def to_openai_tool(function: dict[str, Any]) -> dict[str, Any]:
    """A BFCL function doc -> an OpenAI-style tool (the form chat templates take); the name keeps its dots."""
    params = dict(function.get("parameters") or {})
    params["type"] = "object"
    params["properties"] = _openapi_properties(params.get("properties") or {})
    params["required"] = list(params.get("required") or [])
    return {"type": "function", "function": {"name": function["name"],
                                             "description": str(function.get("description", "") or ""),
                                             "parameters": params}}


def _categories(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    names = [c.strip() for c in value.split(",")] if isinstance(value, str) else [str(c).strip() for c in value]
    names = [("simple" if c == "simple_python" else c) for c in names if c]
    if names == ["all"]:
        return CATEGORIES
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown or not names:
        raise InputError(f"unknown BFCL categories {unknown or names}; choose from {', '.join(CATEGORIES)} or 'all'")
    return tuple(dict.fromkeys(names))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def category_accuracy(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-category AST accuracy in BFCL's terms, from evaluation episodes.

    Each episode needs `group` (the BFCL category, as `BFCLTask.breakdown` gives
    it), `attempt_ok` and optionally `retry_ok`. Returns
    {"groups": {cat: {"n", "acc@1", "acc@2"}}, "non_live_ast": {...}, "live_ast": {...}}:
    acc@1 is BFCL's accuracy (first answer); acc@2 adds r3rl's reflect-and-retry.
    non_live_ast is the unweighted mean over the non-live categories present,
    live_ast the mean weighted by size over the live ones present (BFCL's two
    AST summaries); `complete` says whether all four categories were evaluated
    (BFCL shows N/A otherwise).
    """
    groups = group_accuracy([e for e in episodes if e.get("group") in CATEGORIES])
    cats = {c: groups[c] for c in CATEGORIES if c in groups}
    out: dict[str, Any] = {"groups": cats}
    non_live = [cats[c] for c in NON_LIVE if c in cats]
    if non_live:
        out["non_live_ast"] = {k: _mean([g[k] for g in non_live]) for k in ("acc@1", "acc@2")}
        out["non_live_ast"].update(n=sum(g["n"] for g in non_live), complete=len(non_live) == len(NON_LIVE))
    live = [cats[c] for c in LIVE if c in cats]
    if live:
        n = sum(g["n"] for g in live)
        out["live_ast"] = {k: sum(g[k] * g["n"] for g in live) / n for k in ("acc@1", "acc@2")}
        out["live_ast"].update(n=n, complete=len(live) == len(LIVE))
    return out


class BFCLTask(Task):
    """BFCL single-turn AST categories with BFCL's possible-answer checking.

    Options:
        categories: "all" (default), or a list / comma-separated string of
            simple, multiple, parallel, parallel_multiple, live_simple,
            live_multiple, live_parallel, live_parallel_multiple.
        path: a folder laid out like bfcl-eval's data/; None: the installed package's.
        test_fraction: None (default): every row is in the test split and the
            train split is refused. A share in (0, 1): that share of ids is the
            test split, the rest the train split.
    """

    name = "bfcl"
    system_prompt = SYSTEM_PROMPT
    failure_classes = ERROR_TYPES  # BFCL's own error types

    def __init__(self, categories: str | list[str] = "all", path: str | None = None,
                 test_fraction: float | None = None):
        self.categories = _categories(categories)
        if test_fraction is not None and not 0.0 < float(test_fraction) < 1.0:
            raise InputError(f"test_fraction must be in (0, 1) or None, got {test_fraction}")
        self.path, self.test_fraction = path, None if test_fraction is None else float(test_fraction)
        self._rows: list[Example] | None = None

    def _all(self) -> list[Example]:
        if self._rows is None:
            folder = bfcl_data_dir(self.path)
            self._rows = [ex for c in self.categories for ex in load_category(folder, c)]
        return self._rows

    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        if split not in ("train", "test"):
            raise InputError(f"split must be 'train' or 'test', got {split!r}")
        if self.test_fraction is None:
            if split == "train":
                raise InputError("BFCL is an evaluation benchmark: all its rows are in the 'test' split; set "
                                 "task.options.test_fraction (e.g. 0.5) to hold out a share and train on the rest")
            return sample(self._all(), n, seed)
        return sample(holdout_split(self._all(), split, self.test_fraction, key=lambda ex: ex["id"]), n, seed)

    def prompt(self, example: Example) -> str:
        users = [m["content"] for m in example["messages"] if m["role"] == "user"]
        return users[-1] if users else example["messages"][-1]["content"]

    def messages(self, example: Example) -> list[Message]:
        """Our system prompt, then BFCL's messages; a BFCL system message is appended to ours (one system turn)."""
        msgs = [dict(m) for m in example["messages"]]
        system = self.system_prompt or ""
        if msgs and msgs[0]["role"] == "system":
            system = f"{system}\n\n{msgs.pop(0)['content']}".strip()
        return ([{"role": "system", "content": system}] if system else []) + msgs

    def tools(self, example: Example) -> list[dict[str, Any]]:
        return [to_openai_tool(fn) for fn in example["functions"]]

    def verify(self, example: Example, completion: str) -> Verdict:
        """BFCL's AST check of the calls in the completion (any parseable format)."""
        parsed = parse_tool_calls(completion)
        if not parsed.ok:
            return Verdict(False, f"{DECODER_FAILED}: could not parse tool calls: {parsed.error}", DECODER_FAILED)
        return check_calls(example["category"], example["functions"], example["ground_truth"], parsed.calls)

    def example_id(self, example: Example) -> str:
        return str(example["id"])

    def breakdown(self, example: Example) -> str | None:
        return str(example["category"])

    def summarize(self, episodes: list[dict[str, Any]]) -> dict[str, Any]:
        return category_accuracy(episodes)
