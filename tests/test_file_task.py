"""FileTask: the one base of tasks read from a data file (path, test_path, test_fraction, split loading)."""

from __future__ import annotations

import json

import pytest

from r3rl.demo.addition import AdditionTask
from r3rl.tasks import load_task
from r3rl.tasks.bfcl import BFCLTask
from r3rl.tasks.countdown import CountdownTask
from r3rl.tasks.data import FileTask, load_records, row_error
from r3rl.tasks.function_calling import FunctionCallingTask
from r3rl.tasks.math_task import MathTask
from r3rl.types import Verdict

FILE_TASKS = [FunctionCallingTask, MathTask, CountdownTask, AdditionTask]


@pytest.mark.parametrize("cls", FILE_TASKS, ids=lambda c: c.name)
def test_file_backed_tasks_share_the_options_and_their_checks(cls, tmp_path):
    assert issubclass(cls, FileTask)
    task = cls()
    assert (task.path, task.test_path, task.test_fraction) == (None, None, 0.1)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1"):
        cls(test_fraction=1)
    with pytest.raises(ValueError, match=r"test_path needs path \(the train data\) too"):
        cls(test_path=str(tmp_path / "t.jsonl"))


def test_bfcl_is_not_a_file_task():
    """Its `path` is a folder of BFCL files and it has no train split by default: a command that
    describes a file's train/test split must not treat it as one."""
    assert not issubclass(BFCLTask, FileTask)


class Pairs(FileTask):
    """A minimal user task on a file: rows {"q", "a"}."""

    name = "pairs"

    def __init__(self, **options):
        super().__init__(**options)
        self.reads = 0

    def read_source(self, source):
        self.reads += 1
        rows = load_records(source) if source is not None else [{"q": str(i), "a": str(i)} for i in range(10)]
        for i, row in enumerate(rows):
            if "q" not in row:
                raise row_error(str(source), i, "missing field 'q'")
        return rows

    def split_key(self, example):
        return example["q"]

    def prompt(self, example):
        return example["q"]

    def verify(self, example, completion):
        return Verdict(completion == example["a"])


def test_a_user_file_task_gets_split_and_cached_loading(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"q": f"q{i}", "a": str(i)}) + "\n" for i in range(20)))
    task = Pairs(path=str(path), test_fraction=0.25)
    train, test = task.load_examples("train"), task.load_examples("test")
    assert len(test) == 5 and len(train) == 15  # the exact-size hash holdout of 20 distinct keys
    assert not {r["q"] for r in train} & {r["q"] for r in test}
    assert task.reads == 1  # the file is read once for both splits
    assert task.load_examples("train", n=4, seed=3) == task.load_examples("train", n=4, seed=3)
    builtin = Pairs()
    assert len(builtin.load_examples("train")) + len(builtin.load_examples("test")) == 10

    separate = tmp_path / "test.jsonl"
    separate.write_text(json.dumps({"q": "only", "a": "1"}) + "\n")
    with_test = Pairs(path=str(path), test_path=str(separate))
    assert [r["q"] for r in with_test.load_examples("test")] == ["only"]
    assert len(with_test.load_examples("train")) == 20


def test_a_bad_row_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"q": "x", "a": "1"}) + "\n" + json.dumps({"a": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"row 2 of .*bad.jsonl: missing field 'q'"):
        Pairs(path=str(path)).load_examples("train")


def test_registry_builds_file_tasks_with_their_options(tmp_path):
    task = load_task("math", test_fraction=0.5)
    assert isinstance(task, FileTask) and task.test_fraction == 0.5
