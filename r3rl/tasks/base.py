"""The Task interface: load examples, build first-attempt messages (and tools), verify.

A task is the only place that knows what an example looks like. Everything else
(rollouts, mining, training, evaluation) sees examples as opaque dicts and talks
to the task through these methods.

Evaluation can report results by group (BFCL reports accuracy per category): a
task returns an example's group from `breakdown`; the evaluator stores it in
each episode as "group" and adds `summarize(episodes)` to results.json under
"by_group". The default summary is `group_accuracy`: acc@1 and acc@2 per group.

A failed Verdict names its failure class, one of the task's `failure_classes`
(a small, stable vocabulary: name -> one-line meaning, documented in
docs/failure-classes.md), so evaluation can say which failures a reflection
fixes. A user task that does not classify leaves the vocabulary empty and its
verdicts' class "" ("unclassified").

Tasks whose examples come from a data file derive from `FileTask`
(`r3rl.tasks.data`), which owns the `path`, `test_path` and `test_fraction`
options and their loading.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any, ClassVar

from r3rl.types import Verdict

Example = dict[str, Any]
Message = dict[str, Any]


def group_accuracy(episodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{group: {"n", "acc@1", "acc@2"}} over evaluation episodes that carry a "group".

    An episode is one (example, sample) trial with "attempt_ok" and "retry_ok";
    acc@2 counts a trial whose first attempt or retry passed.
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # n, first-try passes, passes within a retry
    for e in episodes:
        group = e.get("group")
        if group is None:
            continue
        c = counts[str(group)]
        c[0] += 1
        c[1] += bool(e.get("attempt_ok"))
        c[2] += bool(e.get("attempt_ok") or e.get("retry_ok"))
    return {g: {"n": n, "acc@1": ok1 / n, "acc@2": ok2 / n} for g, (n, ok1, ok2) in sorted(counts.items())}


class Task(ABC):
    """Base class for r3rl tasks. Subclasses set `name` and implement the abstract methods.

    Constructor keyword arguments are the task's options (e.g. `path=` for a data
    file); `load_task(name, **options)` passes them through.
    """

    name: str = "task"
    #: the system prompt put before the first user turn, if any
    system_prompt: str | None = None
    #: the failure classes `verify` returns: name -> one-line meaning; {} = this task does not classify
    failure_classes: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        """Return up to n examples of the split ("train" or "test"), deterministically for a seed."""

    @abstractmethod
    def prompt(self, example: Example) -> str:
        """The user's first-turn text for an example."""

    @abstractmethod
    def verify(self, example: Example, completion: str) -> Verdict:
        """Judge a completion. Must never raise and must return quickly for any input.

        A failed verdict's `failure_class` is one of `failure_classes` (or "" when
        the task declares none); a passing verdict's is "".
        """

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

    def breakdown(self, example: Example) -> str | None:
        """The group this example's evaluation results are reported under (e.g. BFCL's category), or None."""
        return None

    def summarize(self, episodes: list[Any]) -> dict[str, Any]:
        """Figures by group from an evaluation's trials: r3rl.evaluation.records.TrialRecord, one per
        (example, sample), with `group`, `attempt_ok`, `retry_ok`, the failure classes and the rest as
        attributes; `trial.get(name)` reads the same fields by name, as the dict records of earlier
        versions were read.

        Called once at the end of an evaluation when `breakdown` gave groups; the
        result goes into results.json as "by_group". Override to report a task's
        own terms (BFCL adds its summary scores).
        """
        return {"groups": group_accuracy(episodes)}

    def example_id(self, example: Example) -> str:
        """A stable id: the example's own `id` field, else a hash of its content."""
        if "id" in example:
            return str(example["id"])
        blob = json.dumps(example, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:16]
