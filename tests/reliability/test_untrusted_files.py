"""Untrusted files: nothing r3rl loads from a user-supplied path is unpickled, and remote code
stays off unless asked. Each check plants code that would create a sentinel file if it ever ran."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r3rl.cli import main
from r3rl.config import Config
from r3rl.demo import model_path as demo_model_path
from tests.reliability.harness import ROOT
from tests.reliability.test_corrupt_inputs import TRAIN_SMALL, trained  # noqa: F401 - the shared fixture


class _Evil:
    """Unpickling this runs code: __reduce__ names a callable that creates the sentinel."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_no_unsafe_load_in_the_source():
    """Every torch.load passes weights_only=True; no pickle, no accelerate custom-state pickle."""
    problems = []
    for f in (ROOT / "r3rl").rglob("*.py"):
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name.endswith("torch.load"):
                    kw = {k.arg: k.value for k in node.keywords}
                    if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                        problems.append(f"{f}:{node.lineno}: {ast.unparse(node)}")
                if name in ("pickle.load", "pickle.loads", "dill.load", "cloudpickle.load") or \
                        name.endswith("register_for_checkpointing"):
                    problems.append(f"{f}:{node.lineno}: {ast.unparse(node)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"])
def test_checkpoint_pickles_are_never_run(trained, tmp_path, capsys, name):  # noqa: F811
    ckpt = tmp_path / "checkpoints" / "step-0000001"
    shutil.copytree(trained / "checkpoints" / "step-0000001", ckpt)
    sentinel = tmp_path / "EXECUTED"
    torch.save({"state": _Evil(sentinel)}, ckpt / name)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["files"].pop(name, None)  # an attacker rewrites the checksums too
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    main(["train", "--resume-from", str(ckpt), f"train.output_dir={tmp_path}",
          f"failures.path={trained / 'failures.jsonl'}", *TRAIN_SMALL])
    assert not sentinel.exists(), f"loading a checkpoint ran the code planted in {name}"


def _remote_code_model(folder: Path, sentinel: Path) -> Path:
    shutil.copytree(demo_model_path(), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n"
        "from transformers import Qwen2Config as EvilConfig, Qwen2ForCausalLM as EvilModel\n"
    )
    return folder


def test_remote_code_stays_off_unless_asked(tmp_path):
    assert Config().model.trust_remote_code is False
    sentinel = tmp_path / "EXECUTED"
    model_dir = _remote_code_model(tmp_path / "model", sentinel)
    assert main(["eval", "--model", str(model_dir), "task.name=addition", "eval.num_examples=2", "-o", str(tmp_path / "ev")]) == 0
    assert not sentinel.exists(), "a model folder's own code ran without trust_remote_code"
    # The check can see execution: asking for remote code runs it. In a child process, because
    # loading that code registers transformers' own Qwen2 classes as "remote" for the whole process.
    code = f"from r3rl.engine.loading import load_model\nload_model({str(model_dir)!r}, trust_remote_code=True)"
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert sentinel.exists()
