"""Task loading (built-in name, import path, entry point, errors) and data-file loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import r3rl.tasks as tasks_pkg
from r3rl.tasks import Task, available_tasks, load_task
from r3rl.tasks.countdown import CountdownTask
from r3rl.tasks.data import DataError, holdout_split, load_records, sample
from r3rl.tasks.function_calling import FunctionCallingTask

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_on_path(monkeypatch):
    """`examples` is a top-level package of the repository, importable from its root."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))


# ---------------------------------------------------------------------- registry
def test_builtin_names():
    assert isinstance(load_task("countdown", n_train=5, n_test=1), CountdownTask)
    assert isinstance(load_task("function_calling"), FunctionCallingTask)
    names = available_tasks()
    assert names["countdown"] == "r3rl.tasks.countdown:CountdownTask"
    assert names["function_calling"] == "r3rl.tasks.function_calling:FunctionCallingTask"


def test_import_path():
    task = load_task("r3rl.tasks.countdown:CountdownTask", num_range=(3, 3), n_train=4, n_test=0)
    assert isinstance(task, CountdownTask) and task.num_range == (3, 3)


def test_custom_task_by_import_path(repo_on_path):
    task = load_task("examples.custom_task.my_task:MyTask", min_length=6)
    assert isinstance(task, Task)
    ex = task.load_examples("train", n=1)[0]
    assert task.verify(ex, f"<answer>{ex['word'][::-1]}</answer>").ok
    assert not task.verify(ex, f"<answer>{ex['word']}</answer>").ok


class _FakeEntryPoint:
    def __init__(self, name: str, target: object):
        self.name, self.value, self._target = name, f"fakepkg.tasks:{name}", target

    def load(self) -> object:
        return self._target


def test_entry_point(monkeypatch, repo_on_path):
    from examples.custom_task.my_task import MyTask

    fake = {"reverse_word": _FakeEntryPoint("reverse_word", MyTask)}
    monkeypatch.setattr(tasks_pkg, "_entry_point_tasks", lambda: fake)
    assert isinstance(load_task("reverse_word", min_length=6), MyTask)
    assert available_tasks()["reverse_word"] == "fakepkg.tasks:reverse_word"


def test_entry_point_that_is_not_a_task(monkeypatch):
    monkeypatch.setattr(tasks_pkg, "_entry_point_tasks", lambda: {"bogus": _FakeEntryPoint("bogus", dict)})
    with pytest.raises(TypeError, match="not a subclass of r3rl.tasks.Task"):
        load_task("bogus")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("countdwn", "unknown task 'countdwn'. Did you mean: countdown"),
        ("function-calling", "Did you mean: function_calling"),
        ("zzzz", "unknown task 'zzzz'. Known tasks: "),
        ("zzzz", "import path like 'mypkg.module:MyTask'"),
        ("r3rl.tasks.nope:Task", "cannot import task module 'r3rl.tasks.nope'"),
        ("r3rl.tasks.countdown:Nope", "module 'r3rl.tasks.countdown' has no attribute 'Nope'"),
    ],
)
def test_unknown_names(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_task(name)


def test_not_a_task_class():
    with pytest.raises(TypeError, match="not a subclass"):
        load_task("r3rl.tasks.countdown:extract_answer")


@pytest.mark.parametrize("name", ["countdown", "function_calling"])
def test_bad_options(name):
    with pytest.raises(ValueError, match=f"task.options of task '{name}'.*unexpected keyword argument 'n_trian'"):
        load_task(name, n_trian=10)


# -------------------------------------------------------------------- data files
ROWS = [{"a": 1, "b": [1, 2]}, {"a": 2, "b": []}, {"a": 3, "b": None}]


def test_load_json_list_and_data_wrapper(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS, "version": 1}))
    assert load_records(tmp_path / "list.json") == ROWS
    assert load_records(str(tmp_path / "wrapped.json")) == ROWS


def test_load_jsonl_skips_blank_lines(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[2]))
    assert load_records(tmp_path / "x.jsonl") == ROWS


def test_load_parquet_written_by_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "x.parquet"
    datasets.Dataset.from_list([{"nums": [1, 2, 3], "target": 6}, {"nums": [4, 5, 6], "target": 15}]).to_parquet(
        str(path))
    assert load_records(path) == [{"nums": [1, 2, 3], "target": 6}, {"nums": [4, 5, 6], "target": 15}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.jsonl", '{"a": 1}\n' * 6 + '{"a": oops}\n', "invalid JSON on line 7 of .*x.jsonl"),
        ("x.jsonl", '{"a": 1}\n[1, 2]\n', "line 2 of .*x.jsonl: expected a JSON object, got list"),
        ("x.json", '[{"a": 1},\n {"a": }]', r"invalid JSON in .*x.json at line 2"),
        ("x.json", '{"rows": []}', r"x.json: expected a list of records or \{\"data\": \[...\]\}, got dict"),
        ("x.json", '[{"a": 1}, {"a": 2}, "three"]', "row 3 of .*x.json: expected an object, got str"),
        ("x.parquet", "not parquet at all", "cannot read Parquet file .*x.parquet"),
        ("x.csv", "a,b\n1,2\n", "unsupported file type '.csv'"),
    ],
)
def test_bad_files_name_file_and_place(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load_records(tmp_path / name)


def test_missing_local_file_is_not_a_hub_lookup(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_records(tmp_path / "typo.jsonl")


def test_holdout_split_is_exact_deterministic_and_keeps_duplicates_together():
    records = [{"q": f"q{i % 50}", "i": i} for i in range(100)]  # every query twice
    test = holdout_split(records, "test", 0.1, key=lambda r: r["q"])
    train = holdout_split(records, "train", 0.1, key=lambda r: r["q"])
    assert len(test) == 10 and len(train) == 90  # 5 of 50 distinct queries, both copies each
    assert not {r["q"] for r in test} & {r["q"] for r in train}
    assert holdout_split(list(reversed(records)), "test", 0.1, key=lambda r: r["q"]) == list(reversed(test))
    with pytest.raises(ValueError, match="split must be"):
        holdout_split(records, "dev", 0.1, key=lambda r: r["q"])


def test_sample():
    items = list(range(10))
    assert sample(items, None, 0) == items and sample(items, 50, 0) == items
    assert sample(items, 3, 1) == sample(items, 3, 1) and len(set(sample(items, 3, 1))) == 3
    with pytest.raises(ValueError):
        sample(items, -1, 0)
