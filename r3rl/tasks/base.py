"""The Task interface: load examples, build first-attempt messages (and tools), verify.

A task is the only place that knows what an example looks like. Everything else
(rollouts, mining, training, evaluation) sees examples as opaque dicts and talks
to the task through these methods.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any

from r3rl.types import Verdict

Example = dict[str, Any]
Message = dict[str, Any]


class Task(ABC):
    """Base class for r3rl tasks. Subclasses set `name` and implement the abstract methods.

    Constructor keyword arguments are the task's options (e.g. `path=` for a data
    file); `load_task(name, **options)` passes them through.
    """

    name: str = "task"
    #: the system prompt put before the first user turn, if any
    system_prompt: str | None = None

    @abstractmethod
    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """Return up to n examples of the split ("train" or "test"), deterministically for a seed."""

    @abstractmethod
    def prompt(self, example: Example) -> str:
        """The user's first-turn text for an example."""

    @abstractmethod
    def verify(self, example: Example, completion: str) -> Verdict:
        """Judge a completion. Must never raise and must return quickly for any input."""

    def tools(self, example: Example) -> list[dict[str, Any]] | None:
        """Tool schemas offered to the model for this example (function calling), else None."""
        return None

    def messages(self, example: Example) -> list[Message]:
        """First-attempt chat messages (system prompt, if any, then the user's task)."""
        msgs: list[Message] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": self.prompt(example)})
        return msgs

    def example_id(self, example: Example) -> str:
        """A stable id: the example's own `id` field, else a hash of its content."""
        if "id" in example:
            return str(example["id"])
        blob = json.dumps(example, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:16]
