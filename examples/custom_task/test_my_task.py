"""The custom-task example loads by import path and verifies as documented."""

from __future__ import annotations

import pytest

from r3rl.tasks import Task, load_task


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("examples.custom_task.my_task:MyTask")


def test_loads_by_import_path_with_options():
    task = load_task("examples.custom_task.my_task:MyTask", min_length=7)
    assert isinstance(task, Task)
    assert all(len(ex["word"]) >= 7 for ex in task.load_examples("train") + task.load_examples("test"))


def test_bad_option_is_reported():
    with pytest.raises(ValueError, match="task.options of task .*unexpected keyword argument 'no_such_option'"):
        load_task("examples.custom_task.my_task:MyTask", no_such_option=1)
    with pytest.raises(ValueError, match="task.options of task .*leaves fewer than 2 words"):
        load_task("examples.custom_task.my_task:MyTask", min_length=50)


def test_splits_are_disjoint_and_seeded(task):
    train = {ex["word"] for ex in task.load_examples("train")}
    test = {ex["word"] for ex in task.load_examples("test")}
    assert train and test and not train & test
    assert task.load_examples("train", n=5, seed=1) == task.load_examples("train", n=5, seed=1)
    assert len(task.load_examples("train", n=5, seed=1)) == 5


@pytest.mark.parametrize(
    ("completion", "ok", "reason"),
    [
        ("<answer>elppa</answer>", True, "correct"),
        ("Reversing a-p-p-l-e... <answer>elppx</answer> no wait <answer> ELPPA </answer>", True, "correct"),
        ("<answer>apple</answer>", False, "expected 'elppa', got 'apple'"),
        ("elppa", False, "no <answer>"),
        ("<answer>elppa", False, "no <answer>"),
        ("<answer>" + "x" * 1_000_000 + "</answer>", False, "too long"),
    ],
)
def test_verify(task, completion, ok, reason):
    verdict = task.verify({"word": "apple"}, completion)
    assert verdict.ok is ok
    assert reason in verdict.reason


def test_first_turn_messages(task):
    ex = task.load_examples("test", n=1)[0]
    msgs = task.messages(ex)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert ex["word"] in msgs[1]["content"]
    assert task.tools(ex) is None
