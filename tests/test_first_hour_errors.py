"""A new user's bad inputs: each is one sentence naming the field or file (never a library traceback),
and relative paths say which folder they were resolved from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from r3rl.cli import main
from r3rl.config import ConfigError, load_config
from r3rl.errors import InputError
from r3rl.tasks import load_task
from r3rl.tasks.data import load_records

ROOT = Path(__file__).resolve().parents[1]
MY_TASK = "examples.custom_task.my_task:MyTask"

# A user's own task module, as a new user writes one: options checked in the constructor.
USER_TASK = '''
from r3rl.tasks import Task, Verdict


class SumTask(Task):
    name = "sums"

    def __init__(self, digits: int = 2):
        if digits < 1:
            raise ValueError(f"digits must be at least 1, got {digits}")
        self.digits = digits

    def load_examples(self, split="train", n=None, seed=0):
        return [{"id": str(i), "a": i, "b": i} for i in range(n or 4)]

    def prompt(self, example):
        return f"{example['a']} + {example['b']} ="

    def verify(self, example, completion):
        return Verdict(completion.strip() == str(example["a"] + example["b"]), "")
'''


def _cli(args: list[str], cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pythonpath) if p)
    return subprocess.run([sys.executable, "-m", "r3rl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


# --- a task's own checks of its options ---

def test_a_task_constructor_value_error_names_task_options_and_the_task():
    with pytest.raises(InputError) as e:
        load_task(MY_TASK, test_fraction=2)
    msg = str(e.value)
    assert msg.startswith(f"task.options of task {MY_TASK!r}: ") and msg.endswith("test_fraction must be in (0, 1), got 2")


def test_a_bug_in_a_task_keeps_its_traceback(tmp_path, monkeypatch):
    # only errors about the options are the user's input: anything else is a bug in their task
    (tmp_path / "buggytask.py").write_text(USER_TASK.replace("self.digits = digits", "self.digits = digits / 0"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ZeroDivisionError):
        load_task("buggytask:SumTask")


def test_new_users_task_run_from_another_folder_with_a_wrong_option_is_one_sentence(tmp_path):
    """The issue's done-criterion, end to end: the user's task package lives in one folder (on their
    PYTHONPATH), the command runs from another, and the option is wrong."""
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir(), elsewhere.mkdir()
    (proj / "mytasks.py").write_text(USER_TASK)
    r = _cli(["eval", "task.name=mytasks:SumTask", "task.options.digits=0", "model.name_or_path=demo"],
             cwd=elsewhere, pythonpath=str(proj))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "r3rl eval: error: task.options of task 'mytasks:SumTask': digits must be at least 1, got 0"]
    # and the official example's own check, the quote
    r = _cli(["eval", f"task.name={MY_TASK}", "task.options.test_fraction=2"], cwd=elsewhere)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"r3rl eval: error: task.options of task {MY_TASK!r}: test_fraction must be in (0, 1), got 2"]


def test_a_task_module_not_found_from_another_folder_names_the_current_folder(tmp_path):
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir(), elsewhere.mkdir()
    (proj / "mytasks.py").write_text(USER_TASK)
    r = _cli(["eval", "task.name=mytasks:SumTask"], cwd=elsewhere)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "No module named 'mytasks'" in r.stderr and f"from the current folder {elsewhere}" in r.stderr


# --- relative data paths ---

def test_a_missing_relative_data_file_names_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        load_records("sums.jsonl")
    assert str(e.value) == f"no such data file: sums.jsonl (a relative path, resolved from the current folder {tmp_path})"
    with pytest.raises(FileNotFoundError) as e:
        load_records(tmp_path / "abs.jsonl")
    assert str(e.value) == f"no such data file: {tmp_path / 'abs.jsonl'}"  # an absolute path needs no note


# --- YAML ---

def test_a_yaml_syntax_error_names_the_file_line_and_column_once(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  steps: 2\n  beta: 0.0\n bad: [1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}, line 4, column 2: invalid YAML") and "<unicode string>" not in msg
    assert msg.count("line") == 1 and "\n" not in msg


# --- a renamed key's warning ---

def test_a_renamed_key_warns_in_one_line_without_source(tmp_path):
    r = _cli(["config", "mine.output=x.jsonl"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "r3rl: warning: config key 'mine.output' is now 'failures.path' (the old spelling is removed in r3rl 0.3)"]


# --- output locations, checked before the work starts ---

@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "sums.jsonl"
    f.write_text("{}\n")
    return f


# The model folder does not exist: an output error must come first, before anything loads or computes.
NO_MODEL = "model.name_or_path=./no-such-model"


@pytest.mark.parametrize("argv,field", [
    (["mine", "task.name=countdown", NO_MODEL, "failures.path={f}/fail.jsonl"], "failures.path"),
    (["eval", "task.name=countdown", NO_MODEL, "eval.output_dir={f}/out"], "eval.output_dir"),
    (["eval", "task.name=countdown", NO_MODEL, "-o", "{f}/out"], "--output"),
    (["train", "task.name=countdown", NO_MODEL, "train.output_dir={f}/run"], "train.output_dir"),
    (["compare", "runs/a", "runs/b", "-o", "{f}/cmp"], "--output"),
    (["demo", "-o", "{f}/demo"], "--output"),
    (["forgetting", "--model", "./no-a", "--model", "./no-b", "-o", "{f}/forgetting.json"], "--output"),
    (["check-task", "countdown", "--cases", "2", "--json", "{f}/check.json"], "--json"),
])
def test_an_output_under_a_file_names_the_field_before_any_work(argv, field, a_file, capsys):
    argv = [a.format(f=a_file) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"r3rl {argv[0]}: error: {field}: cannot write {a_file}/") and "\n" not in err
    assert f"{a_file} is a file, not a folder" in err and ".tmp" not in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_in_a_folder_that_takes_no_files_names_the_field(capsys):
    assert main(["mine", "task.name=countdown", NO_MODEL, "failures.path=/proc/fail.jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r3rl mine: error: failures.path: cannot write /proc/fail.jsonl: cannot create a file in /proc (")
    assert ".tmp" not in err and "\n" not in err


def test_writable_outputs_pass_and_leave_nothing_behind(tmp_path):
    from r3rl.runtime.file_checks import check_output

    check_output(tmp_path / "new" / "deeper", "train.output_dir")
    check_output(tmp_path / "f.jsonl", "failures.path", is_file=True)
    assert list(tmp_path.iterdir()) == []  # nothing created: the folders are made when the work writes
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match=r"^failures.path: .*/d is a folder, not a file"):
        check_output(tmp_path / "d", "failures.path", is_file=True)


# --- noise a user cannot act on ---

def test_loading_a_model_and_an_adapter_prints_no_bar_and_no_library_future_warning(model_dir, tmp_path, capfd):
    import warnings

    from peft import LoraConfig, get_peft_model

    from r3rl.engine.loading import load_model

    model, _ = load_model(str(model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "adapter")
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # peft reads transformers' deprecated is_gradient_checkpointing
        load_model(str(model_dir))
        load_model(str(tmp_path / "adapter"))
    err = capfd.readouterr().err
    assert "Loading weights" not in err, err


def test_a_missing_relative_config_file_names_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config("configs/mine.yaml")
    assert str(e.value) == (f"config file not found: configs/mine.yaml (a relative path, resolved from the "
                            f"current folder {tmp_path})")


def test_r3rls_own_warnings_print_as_one_line_under_the_command_line():
    import warnings

    from r3rl import cli
    from r3rl.training.trainer import NoLearningSignalWarning

    saved = warnings.formatwarning
    try:
        cli._one_line_warnings()
        line = warnings.formatwarning("no learning signal: ...", NoLearningSignalWarning, "trainer.py", 465,
                                      "self._watch_signal(t)")
        assert line == "r3rl: warning: no learning signal: ...\n"
        other = warnings.formatwarning("x is deprecated", FutureWarning, "lib.py", 3, "x()")
        assert other.startswith("lib.py:3: FutureWarning: x is deprecated")  # a library's keeps Python's format
    finally:
        warnings.formatwarning = saved
