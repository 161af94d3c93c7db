"""Loading errors a person can act on: one sentence naming the model, folder, file or dataset, and the fix."""

from __future__ import annotations

import json
import os

import pytest

from r3rl.cli import main
from r3rl.engine.loading import load_model
from r3rl.tasks.data import DataError, load_records


@pytest.mark.parametrize("name", ["./no-such-model", "runs/x/final", "/tmp/r3rl-no-such-folder", "runs/nonexistent"])
def test_a_missing_model_folder_is_one_sentence(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local-looking name must not be blamed on the hub
    with pytest.raises(FileNotFoundError) as e:
        load_model(name)
    msg = str(e.value)
    assert msg.startswith(f"no such model folder: {name}") and "HF_HUB_OFFLINE" not in msg and "\n" not in msg
    if not name.startswith("/"):  # a relative path says where it was looked for
        assert f"resolved from the current folder {os.getcwd()}" in msg


def test_a_hub_id_whose_owner_is_a_local_folder_is_a_missing_folder(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"^no such model folder: models/tiny \(a relative path"):
        load_model("models/tiny")


@pytest.mark.parametrize("name,local", [
    ("Qwen/Qwen2-1.5B", False), ("gpt2", False), ("meta-llama/Llama-3.2-1B-Instruct", False),
    ("runs/nonexistent", True), ("runs", False), ("./m", True), ("../m", True), ("/abs/m", True),
    ("~/m", True), ("a/b/c", True), ("org/name with space", True),
])
def test_which_names_look_like_local_paths(name, local, tmp_path, monkeypatch):
    from r3rl.engine.loading import _looks_like_path

    monkeypatch.chdir(tmp_path)  # no local folder named like a hub owner here
    assert _looks_like_path(name) is local


def test_an_unreachable_hub_model_names_the_id_and_the_offline_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as e:
        load_model("r3rl-tests/no-such-model")
    msg = str(e.value)
    assert msg.startswith("cannot load model 'r3rl-tests/no-such-model': HF_HUB_OFFLINE=1 is set") and "\n" not in msg


def test_cli_eval_on_a_missing_folder_prints_one_line(capsys):
    assert main(["eval", "--model", "./no-such-model", "task.name=countdown", "eval.num_examples=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r3rl eval: error: no such model folder: ./no-such-model (a relative path") and "\n" not in err


def test_an_unknown_task_is_rejected_before_the_model_loads(capsys):
    # the model folder does not exist either: the task error must come first, without loading anything
    assert main(["eval", "--model", "./no-such-model", "task.name=countdwn"]) == 2
    err = capsys.readouterr().err
    assert "countdwn" in err and "countdown" in err and "model folder" not in err and "no such model" not in err


def test_model_settings_reach_from_pretrained(model_dir, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(name, **kwargs):
        seen.update(kwargs)
        kwargs.pop("revision", None)
        return real(name, **{k: v for k, v in kwargs.items() if k != "flag_for_test"})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    from r3rl.config import load_config
    from r3rl.engine.loading import load_for_inference

    cfg = load_config(None, [f"model.name_or_path={model_dir}", "model.revision=v1", "model.attn_implementation=eager",
                             "model.init_kwargs.flag_for_test=true"])
    load_for_inference(cfg.model)
    assert seen["revision"] == "v1" and seen["attn_implementation"] == "eager" and seen["flag_for_test"] is True


def test_an_offline_dataset_id_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_records("r3rl-tests/no-such-dataset")
    msg = str(e.value)
    assert msg.startswith("cannot load dataset 'r3rl-tests/no-such-dataset'") and "task.options.path" in msg


def test_an_empty_data_file_is_named(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=f"{empty} holds no records"):
        load_records(empty)


def test_json_lines_saved_as_json_load_and_a_bad_line_names_line_and_column(tmp_path):
    f = tmp_path / "rows.json"
    f.write_text(json.dumps({"nums": [1, 2], "target": 3}) + "\n" + json.dumps({"nums": [4], "target": 4}) + "\n")
    assert [r["target"] for r in load_records(f)] == [3, 4]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{"a": 1,, "b": 2}\n')
    with pytest.raises(DataError, match=r"line 2 of .*bad.jsonl.*\(at column 9\)"):
        load_records(bad)


def test_a_record_cut_short_is_reported_at_its_line_not_the_next(tmp_path):
    from r3rl.runtime.io import iter_jsonl

    f = tmp_path / "cut.jsonl"
    f.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"cut.jsonl, line 2: invalid JSON at the end of the line"):
        list(iter_jsonl(f))
    with pytest.raises(DataError, match=r"line 2 of .*cut.jsonl: Expecting value \(at the end of the line"):
        load_records(f)
