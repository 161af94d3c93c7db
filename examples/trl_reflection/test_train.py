"""The TRL example trains two steps on a failure set and saves a model that loads back."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from examples.trl_reflection.train import main  # noqa: E402
from r3rl.runtime.io import JsonlWriter  # noqa: E402
from r3rl.tasks import load_task  # noqa: E402


def _failure_set(path, n=4):
    task = load_task("addition")
    with JsonlWriter(path) as w:
        for ex in task.load_examples("train", n=n, seed=1):
            w.write({"example_id": task.example_id(ex), "example": ex, "attempts": 1, "pass_rate": 0.0,
                     "failed_attempts": [f"<answer>{ex['a'] + ex['b'] - 10}</answer>"], "reasons": ["wrong sum"]})


def test_example_trains_and_saves(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from r3rl.demo import model_path as demo_model_path

    _failure_set(tmp_path / "failures.jsonl")
    rc = main(["--failures", str(tmp_path / "failures.jsonl"), "--output-dir", str(tmp_path / "run"),
               "--max-steps", "2", "--num-generations", "4", "--failures-per-step", "2",
               "--max-completion-length", "32"])
    assert rc == 0
    assert f"final model: {tmp_path / 'run' / 'final'}" in capsys.readouterr().out
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    base = AutoModelForCausalLM.from_pretrained(demo_model_path())
    diffs = [(a - b).abs().max().item() for a, b in zip(trained.parameters(), base.parameters())]
    assert max(diffs) > 0  # two GRPO steps at lr 3e-4 moved the weights


def test_missing_failure_set_is_one_sentence(tmp_path, capsys):
    rc = main(["--failures", str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "failure set not found" in err and "Traceback" not in err
