"""Task registry. Built-in tasks load by name; user tasks by import path or entry point.

    load_task("countdown", num_range=(3, 4))
    load_task("mypkg.tasks:MyTask", path="data.jsonl")

A package can also expose tasks through the `r3rl.tasks` entry-point group:

    [project.entry-points."r3rl.tasks"]
    mytask = "mypkg.tasks:MyTask"
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from r3rl.errors import InputError, R3RLError
from r3rl.tasks.base import Example, Task
from r3rl.types import Verdict

__all__ = ["Task", "Example", "Verdict", "load_task", "register_task", "available_tasks"]

# Built-ins are named by import path so that importing r3rl.tasks stays cheap.
_BUILTIN: dict[str, str] = {
    "countdown": "r3rl.tasks.countdown:CountdownTask",
    "function_calling": "r3rl.tasks.function_calling:FunctionCallingTask",
    "bfcl": "r3rl.tasks.bfcl:BFCLTask",
    "math": "r3rl.tasks.math_task:MathTask",
}
_REGISTERED: dict[str, type[Task]] = {}


def register_task(name: str):
    """Class decorator that registers a Task subclass under `name`."""

    def deco(cls: type[Task]) -> type[Task]:
        _REGISTERED[name] = cls
        return cls

    return deco


def _entry_point_tasks() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="r3rl.tasks")}


def available_tasks() -> dict[str, str]:
    """name -> where it comes from (import path), for `r3rl tasks`."""
    out = dict(_BUILTIN)
    out.update({k: f"{v.__module__}:{v.__qualname__}" for k, v in _REGISTERED.items()})
    out.update({k: ep.value for k, ep in _entry_point_tasks().items()})
    return dict(sorted(out.items()))


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise InputError(f"task import path {path!r} must look like 'package.module:ClassName'")
    # The working directory is importable, as under `python -m`: the `r3rl` console script alone
    # would not find `examples.custom_task.my_task` run from the folder the example names.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        where = ""
        if isinstance(e, ModuleNotFoundError) and e.name and module_name.split(".")[0] == e.name.split(".")[0]:
            # the package itself is missing: say where it was looked for (run from another folder, the
            # user's `mytasks` is not importable)
            where = f" (an import path, resolved from the current folder {os.getcwd()} and the installed packages)"
        raise InputError(f"cannot import task module {module_name!r} (from {path!r}): {e}{where}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InputError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})") from None


def load_task(name_or_path: str, **options: Any) -> Task:
    """Instantiate a task by registered name, entry-point name, or `module:Class` path."""
    if not name_or_path:
        raise InputError("no task given: set task.name (see `r3rl tasks`) or an import path 'mypkg.module:MyTask'")
    if name_or_path in _REGISTERED:
        cls: Any = _REGISTERED[name_or_path]
    elif name_or_path in _BUILTIN:
        cls = _import(_BUILTIN[name_or_path])
    elif ":" in name_or_path:
        cls = _import(name_or_path)
    else:
        eps = _entry_point_tasks()
        if name_or_path in eps:
            cls = eps[name_or_path].load()
        else:
            names = list(available_tasks())
            close = difflib.get_close_matches(name_or_path, names, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise InputError(
                f"unknown task {name_or_path!r}.{hint} Known tasks: {', '.join(names)}; "
                "or give an import path like 'mypkg.module:MyTask'."
            )
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"{name_or_path!r} is not a subclass of r3rl.tasks.Task")
    try:
        return cls(**options)
    except R3RLError:
        raise  # already one sentence naming its file or field (e.g. a task's missing data file)
    except (TypeError, ValueError) as e:
        # An unknown option (TypeError) or a task's own check of its options (ValueError): the user's input,
        # one sentence, not a traceback through their constructor. Other exceptions are bugs and keep theirs.
        raise InputError(f"task.options of task {name_or_path!r}: {e}") from e
