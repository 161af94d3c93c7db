"""The `r3rl` command from the outside: help, tasks, config errors, mine and eval on local model folders."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from r3rl import cli
from r3rl.cli import main
from r3rl.errors import DamagedFileError, InputError
from r3rl.tasks.data import DataError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["generation.max_attempt_tokens=8", "generation.max_reflection_tokens=8", "generation.max_retry_tokens=8"]


COMMANDS = ("mine", "train", "eval", "plan", "report", "compare", "demo", "forgetting", "tasks", "check-task", "config")


def _registered_commands(parser) -> set[str]:
    """The subcommand names argparse knows (the help text cannot tell: the demo's line names four of them)."""
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def test_every_command_is_registered():
    from r3rl.cli import build_parser

    assert _registered_commands(build_parser()) == set(COMMANDS)


def test_help_runs_and_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "r3rl", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    # each command heads its own line of the list (a word inside another command's help does not count)
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("    ") and not line.startswith("     ")}
    assert listed == set(COMMANDS), out.stdout


def _raising(exc: BaseException):
    def cmd(args):
        raise exc
    return cmd


@pytest.mark.parametrize("exc", [InputError("data.jsonl, line 3: invalid JSON"), DataError("row 2 of d.jsonl: bad"),
                                 FileNotFoundError("no such data file: d.jsonl"),
                                 DamagedFileError("model.safetensors: damaged weights file")])
def test_a_user_error_is_one_line_with_exit_status_2(exc, monkeypatch, capsys):
    monkeypatch.setattr(cli, "cmd_tasks", _raising(exc))
    assert main(["tasks"]) == 2
    err = capsys.readouterr().err
    assert err == f"r3rl tasks: error: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("not enough values to unpack"), KeyError("input_ids"),
                                 RuntimeError("shape mismatch")])
def test_an_unexpected_exception_keeps_its_traceback(exc, monkeypatch, capsys):
    """A bug inside r3rl or a library must not be reduced to one line: the traceback is how it gets fixed."""
    monkeypatch.setattr(cli, "cmd_tasks", _raising(exc))
    with pytest.raises(type(exc)) as info:
        main(["tasks"])
    assert info.value is exc
    assert "error:" not in capsys.readouterr().err


def test_tasks_lists_builtins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "countdown" in out and "function_calling" in out and "addition" in out


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.learnig_rate=1", "Did you mean: learning_rate"),
        ("train.steps=abc", "train.steps: expected an integer"),
        ("rollout.group_size=0", "rollout.group_size: must be at least 1"),
        ("train.advantage=ppo", "train.advantage: 'ppo' is not one of normalized, mean_only"),
    ],
)
def test_config_errors_name_the_field(override, message, capsys):
    assert main(["config", override]) == 2
    assert message in capsys.readouterr().err


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 4\n")
    assert main(["config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "batch_size" in err


def test_every_preset_loads(capsys):
    for preset in sorted((ROOT / "configs").glob("*.yaml")):
        assert main(["config", "--config", str(preset)]) == 0, preset


def test_mine_from_the_cli(model_dir, tmp_path, capsys):
    out = tmp_path / "failures.jsonl"
    args = ["mine", f"model.name_or_path={model_dir}", "task.name=countdown", "failures.num_examples=6",
            "failures.attempts_per_example=2", f"failures.path={out}", *SMALL]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 6 and out.exists()
    assert main(args) == 0  # a second run resumes: nothing left to do
    assert json.loads(capsys.readouterr().out)["skipped_already_mined"] == 6


def test_eval_on_a_lora_adapter_folder(model_dir, tmp_path, capsys):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(adapter)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(adapter), "-o", str(out), "task.name=countdown", "eval.num_examples=4", *SMALL]) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("task", "model", "n", "acc@1", "acc@1_ci", "acc@2", "acc@2_ci", "acc@2_no_reflection", "acc@2_no_reflection_ci"):
        assert key in res
    assert res["model"] == str(adapter) and res["n"] == 4
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 4


def test_overrides_may_follow_options(capsys):
    assert main(["config", "train.steps=3", "-c", str(ROOT / "r3rl/demo/demo.yaml"), "seed=5", "--docs"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("train.steps = 3 ") for line in out.splitlines())
    assert any(line.startswith("seed = 5 ") for line in out.splitlines())


def test_a_bad_override_is_blamed_on_the_override_not_the_file(capsys):
    assert main(["config", "-c", str(ROOT / "r3rl/demo/demo.yaml"), "train.steps=abc"]) == 2
    err = capsys.readouterr().err
    assert "command-line override 'train.steps=abc': train.steps: expected an integer" in err
    assert "demo.yaml" not in err


def test_a_task_by_import_path_loads_with_the_console_script_from_the_repo_root(tmp_path):
    """The example README runs `r3rl ... task.name=examples.custom_task.my_task:MyTask` from the repo root."""
    script = Path(sys.executable).with_name("r3rl")
    if not script.exists():
        pytest.skip("the r3rl console script is not installed next to this interpreter")
    code = ("import sys; sys.argv = ['r3rl', 'config']; sys.path = [p for p in sys.path if p not in ('', '.')]\n"
            "from r3rl.tasks import load_task; print(type(load_task('examples.custom_task.my_task:MyTask')).__name__)")
    # what the console script does: no '' on sys.path, cwd = the repo root
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "MyTask"
