"""Damaged inputs: each gives one sentence naming the file (and row or field), exit status 2, no
library traceback, and nothing is trained on garbage.

Covered: failure set (truncated, garbled JSON, an example the task cannot read), checkpoint (every
state file truncated or garbled, trainer_state.json), config (YAML, a field's value), dataset rows
(addition, countdown, function calling), model folder (tokenizer.json, config.json, weights).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from r3rl.cli import main
from r3rl.demo import model_path as demo_model_path
from tests.reliability.harness import TINY, jsonl_rows

TRAIN_SMALL = TINY + ["train.lora=false", "train.steps=2", "train.batch_size=2", "train.micro_batch_size=2",
                      "train.save_every=1", "failures.num_examples=24", "failures.attempts_per_example=2"]


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must fail with exit status 2 and a one-line message."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    msgs = [line for line in err if "error:" in line]
    assert len(msgs) == 1 and "Traceback" not in "\n".join(err), err
    return msgs[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-step run: its failure set and checkpoints are damaged copy by copy below."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", f"train.output_dir={run}", f"failures.path={run}/failures.jsonl", *TRAIN_SMALL]) == 0
    return run


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---------------------------------------------------------------------------------- failure set
@pytest.mark.parametrize("damage,expect", [
    ("garbled", "line"),
    ("not_an_object", "line"),
    ("missing_field", "failed_attempts"),
    ("bad_example", "'example' is not a valid addition example"),
    ("example_not_object", "'example' must be an object"),
])
def test_damaged_failure_set(trained, tmp_path, capsys, damage, expect):
    rows = (trained / "failures.jsonl").read_text().splitlines()
    assert len(rows) >= 3
    bad = tmp_path / "failures.jsonl"
    if damage == "truncated":
        text = "\n".join(rows)[:-5]
    elif damage == "garbled":
        rows[1] = rows[1][:20] + "\x00}{" + rows[1][20:]
        text = "\n".join(rows) + "\n"
    elif damage == "not_an_object":
        rows[1] = "[1, 2]"
        text = "\n".join(rows) + "\n"
    else:
        rec = json.loads(rows[1])
        if damage == "missing_field":
            del rec["failed_attempts"]
        elif damage == "bad_example":
            rec["example"] = {"id": "x", "a": "seven"}  # not two integers: the task cannot prompt it
        else:
            rec["example"] = "7+8"
        rows[1] = json.dumps(rec)
        text = "\n".join(rows) + "\n"
    bad.write_text(text)
    _copy_state(trained, bad)
    msg = _error(capsys, ["train", f"train.output_dir={tmp_path / 'out'}", f"failures.path={bad}", *TRAIN_SMALL])
    assert str(bad) in msg and expect in msg
    assert not (tmp_path / "out" / "metrics.jsonl").exists() or not (tmp_path / "out" / "metrics.jsonl").read_text()


def _copy_state(trained: Path, failures: Path) -> None:
    """The failure set's state file (what mined it, which lines are final) goes with a copied set."""
    from r3rl.runtime.chunks import state_path

    shutil.copy(state_path(trained / "failures.jsonl"), state_path(failures))
    shutil.copy(trained / "failures.jsonl.passed", str(failures) + ".passed")


def test_truncated_failure_set_tail_is_repaired(trained, tmp_path):
    """failures.path is mining's resumable output: an unterminated line after the final ones is what a
    kill leaves, so it is dropped and its chunk mined again, never read as a row."""
    bad = tmp_path / "failures.jsonl"
    rows = (trained / "failures.jsonl").read_text()
    bad.write_text(rows + rows.splitlines(keepends=True)[0][:-5])
    _copy_state(trained, bad)
    assert main(["train", f"train.output_dir={tmp_path / 'out'}", f"failures.path={bad}", *TRAIN_SMALL]) == 0
    assert jsonl_rows(bad, allow_partial_tail=False) == jsonl_rows(trained / "failures.jsonl", allow_partial_tail=False)


def test_failure_set_cut_inside_its_final_lines_names_both_files(trained, tmp_path, capsys):
    bad = tmp_path / "failures.jsonl"
    bad.write_text((trained / "failures.jsonl").read_text()[:-5])
    _copy_state(trained, bad)
    msg = _error(capsys, ["train", f"train.output_dir={tmp_path / 'out'}", f"failures.path={bad}", *TRAIN_SMALL])
    assert f"{bad} holds" in msg and "failures.jsonl.state.json says" in msg and f"delete {bad} to start over" in msg


# ---------------------------------------------------------------------------------- checkpoint
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"])
@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_damaged_checkpoint(trained, tmp_path, capsys, name, how):
    ckpt = tmp_path / "checkpoints" / "step-0000001"
    shutil.copytree(trained / "checkpoints" / "step-0000001", ckpt)
    (_truncate if how == "truncated" else _garble)(ckpt / name)
    msg = _error(capsys, ["train", "--resume-from", str(ckpt), f"train.output_dir={tmp_path}",
                          f"failures.path={trained / 'failures.jsonl'}", *TRAIN_SMALL])
    assert str(ckpt / name) in msg, msg
    assert not (tmp_path / "final").exists()


# ---------------------------------------------------------------------------------- config
@pytest.mark.parametrize("text,expect", [
    ("train:\n  steps: [1,\n", "invalid YAML"),
    ("train:\n  steps: many\n", "train.steps"),
    ("train: 3\n", "train"),
    ("- a\n- b\n", "mapping"),
])
def test_damaged_config(tmp_path, capsys, text, expect):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    msg = _error(capsys, ["train", "--config", str(cfg), f"train.output_dir={tmp_path}"])
    assert str(cfg) in msg and expect in msg, msg


# ---------------------------------------------------------------------------------- dataset rows
@pytest.mark.parametrize("task,rows,expect", [
    ("addition", ['{"a": 1, "b": 2}', '{"a": 1, "b": '], "line 2"),
    ("addition", ['{"a": 1, "b": 2}', '{"a": "x", "b": 2}'], "'a'"),
    ("countdown", ['{"nums": [1, 2], "target": 3}', '{"nums": [1, "q"], "target": 3}'], "'nums'"),
    ("countdown", ['{"nums": [1, 2], "target": 3}', '{"nums": [1, 2]}'], "target"),
    ("function_calling", ['{"query": "q", "tools": "[{", "answers": []}'], "'tools'"),
    ("function_calling", ['{"query": "q", "tools": [], "answers": [{"arguments": {}}]}'], "row 1"),
])
def test_damaged_dataset_row(tmp_path, capsys, task, rows, expect):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(rows) + "\n")
    msg = _error(capsys, ["mine", f"task.name={task}", f"task.options.path={data}", "model.name_or_path=demo",
                          "failures.num_examples=4", f"failures.path={tmp_path / 'f.jsonl'}"])
    assert str(data) in msg and expect in msg, msg
    assert not (tmp_path / "f.jsonl").exists() or not (tmp_path / "f.jsonl").read_text()


# ---------------------------------------------------------------------------------- model folder
@pytest.mark.parametrize("name,how", [
    ("tokenizer.json", "truncated"), ("tokenizer.json", "garbled"), ("tokenizer.json", "foreign"),
    ("config.json", "truncated"), ("tokenizer_config.json", "garbled"),
    ("model.safetensors", "truncated"), ("model.safetensors", "header"),
])
def test_damaged_model_folder(tmp_path, capsys, name, how):
    model = tmp_path / "model"
    shutil.copytree(demo_model_path(), model)
    f = model / name
    if how == "truncated":
        _truncate(f)
    elif how == "garbled":
        f.write_bytes(b"\x00\xff garbage " + f.read_bytes()[:100])
    elif how == "foreign":
        f.write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    else:
        data = bytearray(f.read_bytes())
        data[:8] = (10 ** 12).to_bytes(8, "little")  # a header length past the end of the file
        f.write_bytes(bytes(data))
    msg = _error(capsys, ["eval", "--model", str(model), "task.name=addition", "eval.num_examples=2", "-o", str(tmp_path / "ev")])
    assert str(model) in msg, msg
    if how != "foreign":
        assert str(f) in msg, msg
    assert not (tmp_path / "ev" / "results.json").exists()
