"""The addition task: verifier (table-driven, malformed and huge inputs), splits, file loading."""

from __future__ import annotations

import json
import time

import pytest

from r3rl.tasks import load_task
from r3rl.demo.addition import AdditionTask, extract_answer, pair_in_test_split

EX = {"a": 347, "b": 285}  # 632


@pytest.mark.parametrize(
    "completion, ok, reason_part",
    [
        ("<answer>632</answer>", True, "correct"),
        ("<answer> 632 \n</answer>", True, "correct"),
        ("Let me add. 7+5=12 ... <answer>632</answer><|im_end|>", True, "correct"),
        ("<answer>631</answer>", False, "wrong answer: 631"),
        ("<answer>532</answer> no wait <answer>632</answer>", True, "correct"),  # last block counts
        ("<answer>632</answer> no wait <answer>532</answer>", False, "wrong answer: 532"),
        ("<answer>0632</answer>", True, "correct"),
        ("<answer>+632</answer>", True, "correct"),
        ("<answer>-632</answer>", False, "wrong answer: -632"),
        ("632", False, "no <answer>"),
        ("", False, "no <answer>"),
        ("<answer>632", False, "no <answer>"),
        ("632</answer>", False, "no <answer>"),
        ("</answer>632<answer>", False, "no <answer>"),
        ("<answer></answer>", False, "empty answer"),
        ("<answer>   </answer>", False, "empty answer"),
        ("<answer>six hundred</answer>", False, "not an integer"),
        ("<answer>632.0</answer>", False, "not an integer"),
        ("<answer>6 32</answer>", False, "not an integer"),
        ("<answer>6,32</answer>", False, "not an integer"),
        ("<answer>\u0666\u0663\u0662</answer>", False, "not an integer"),  # Arabic-Indic digits: not plain ASCII
        ("<answer>" + "9" * 21 + "</answer>", False, "too long"),
        ("<answer><answer>632</answer>", True, "correct"),  # innermost opening tag before the last close
    ],
)
def test_verify_table(completion: str, ok: bool, reason_part: str) -> None:
    v = AdditionTask().verify(EX, completion)
    assert v.ok is ok
    assert reason_part in v.reason


def test_wrong_reason_does_not_leak_the_expected_sum() -> None:
    # The reason may be shown to the model (include_reason); it must not contain the answer.
    assert "632" not in AdditionTask().verify(EX, "<answer>631</answer>").reason


@pytest.mark.parametrize("bad", [{}, {"a": 1}, {"a": "x", "b": 2}, {"a": None, "b": 2}])
def test_verify_never_raises_on_bad_examples(bad: dict) -> None:
    v = AdditionTask().verify(bad, "<answer>3</answer>")
    assert not v.ok and "bad example" in v.reason


def test_verify_non_text_completion() -> None:
    v = AdditionTask().verify(EX, None)  # type: ignore[arg-type]
    assert not v.ok and "not text" in v.reason


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>" * 150_000,  # 1.2 MB of unclosed tags
        "</answer>" * 120_000,
        "<answer>" + "1" * 1_000_000 + "</answer>",
        "x" * 1_000_000 + "<answer>632</answer>",
    ],
)
def test_verify_is_fast_on_megabyte_inputs(completion: str) -> None:
    t = time.perf_counter()
    AdditionTask().verify(EX, completion)
    assert time.perf_counter() - t < 0.2


def test_extract_answer() -> None:
    assert extract_answer("a <answer> 12 </answer> b") == "12"
    assert extract_answer("<answer>1</answer><answer>2</answer>") == "2"
    assert extract_answer("no tags") is None


def test_prompt_and_messages() -> None:
    task = AdditionTask()
    assert task.prompt(EX) == "What is 347 + 285? Put the final answer inside <answer></answer> tags."
    assert task.messages(EX) == [{"role": "user", "content": task.prompt(EX)}]


def test_registry_loads_task_with_options() -> None:
    task = load_task("addition", digits=3)
    assert isinstance(task, AdditionTask) and task.digits == 3
    with pytest.raises(ValueError, match="task.options of task .addition.: .*nope"):
        load_task("addition", nope=1)


@pytest.mark.parametrize("digits", [1, 2, 3, 5])
def test_generated_splits_are_disjoint_deterministic_and_in_range(digits: int) -> None:
    task = AdditionTask(digits=digits)
    train = task.load_examples("train", n=60, seed=3)
    test = task.load_examples("test", n=40, seed=3)
    assert train == task.load_examples("train", n=60, seed=3)
    assert train != task.load_examples("train", n=60, seed=4)
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    for ex in train + test:
        assert lo <= ex["a"] <= hi and lo <= ex["b"] <= hi
        assert ex["id"] == f"{ex['a']}+{ex['b']}"
    train_pairs = {frozenset((e["a"], e["b"])) for e in train}
    test_pairs = {frozenset((e["a"], e["b"])) for e in test}
    assert not train_pairs & test_pairs
    assert all(pair_in_test_split(e["a"], e["b"], 0.1) for e in test)
    assert not any(pair_in_test_split(e["a"], e["b"], 0.1) for e in train)


def test_two_digit_splits_are_disjoint_exhaustively() -> None:
    task = AdditionTask(digits=2)
    train = task.load_examples("train", n=20_000, seed=0)  # asks for more than exist: returns what it finds
    test = task.load_examples("test", n=20_000, seed=0)
    assert len({(e["a"], e["b"]) for e in train}) == len(train)
    assert not {(e["b"], e["a"]) for e in test} & {(e["a"], e["b"]) for e in train}
    assert 0.05 < len(test) / (len(train) + len(test)) < 0.15
    assert len(test) >= 400  # enough held-out problems for the demo's evaluation


def test_split_hash_is_order_free() -> None:
    assert all(pair_in_test_split(a, b, 0.3) == pair_in_test_split(b, a, 0.3) for a in range(50) for b in range(50))


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="digits"):
        AdditionTask(digits=0)
    with pytest.raises(ValueError, match="test_fraction"):
        AdditionTask(test_fraction=1.0)
    with pytest.raises(ValueError, match="test_path needs path"):
        AdditionTask(test_path="x.jsonl")
    with pytest.raises(ValueError, match="split"):
        AdditionTask().load_examples("validation")


# ------------------------------------------------------------------------- files
def test_jsonl_file_is_hash_split(tmp_path) -> None:
    path = tmp_path / "data.jsonl"
    rows = [{"a": a, "b": a + 1} for a in range(200)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = AdditionTask(path=str(path))
    train, test = task.load_examples("train"), task.load_examples("test")
    assert len(train) + len(test) == 200 and test
    assert {(e["a"], e["b"]) for e in train}.isdisjoint({(e["a"], e["b"]) for e in test})
    assert len(task.load_examples("train", n=10, seed=1)) == 10
    assert task.verify(train[0], f"<answer>{train[0]['a'] + train[0]['b']}</answer>").ok


def test_json_train_and_test_files(tmp_path) -> None:
    tr, te = tmp_path / "train.json", tmp_path / "test.json"
    tr.write_text(json.dumps([{"a": 1, "b": 2, "id": 7}, {"a": 3, "b": 4}]))
    te.write_text(json.dumps([{"a": 5, "b": 6}]))
    task = AdditionTask(path=str(tr), test_path=str(te))
    assert task.load_examples("train") == [{"a": 1, "b": 2, "id": "7"}, {"a": 3, "b": 4}]
    assert task.load_examples("test") == [{"a": 5, "b": 6}]
    assert task.example_id(task.load_examples("train")[0]) == "7"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"a": 1, "b": 2}\n{"a": 1}\n', r"bad.jsonl:line 2: missing field 'b'"),
        ("bad.jsonl", '{"a": 1, "b": 2}\n{oops\n', r"bad.jsonl:line 2: invalid JSON"),
        ("bad.jsonl", '{"a": 1, "b": "2"}\n', r"bad.jsonl:line 1: field 'b' must be an integer"),
        ("bad.jsonl", '{"a": true, "b": 2}\n', r"bad.jsonl:line 1: field 'a' must be an integer"),
        ("bad.jsonl", '[1, 2]\n', r"bad.jsonl:line 1: expected an object"),
        ("bad.json", '{"a": 1, "b": 2}', r"bad.json: a .json file must hold a list"),
        ("bad.json", '[{"a": 1, "b": 2}, {"a": 1.5, "b": 2}]', r"bad.json:row 1: field 'a' must be an integer"),
        ("bad.json", '[{"a": 1', r"bad.json: invalid JSON"),
    ],
)
def test_bad_files_name_file_and_row(tmp_path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        AdditionTask(path=str(path)).load_examples("train")


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-file.jsonl"):
        AdditionTask(path="no-such-file.jsonl").load_examples("train")
