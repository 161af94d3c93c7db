"""Every engine r3rl opens is closed, on success, error and Ctrl-C: the trainer, `r3rl mine`, `r3rl eval`,
the demo. The hf engine's close is a no-op; a spy counts the calls (tests/vllm runs the real vLLM engine)."""

from __future__ import annotations

import pytest

from r3rl.engine.hf import HFEngine
from r3rl.environment.rollout import VerifierError

from tests.trainer_fixtures import cli_overrides, tiny_config


@pytest.fixture
def closes(monkeypatch):
    """A list that gets one entry per HFEngine.close() call."""
    calls: list[int] = []
    base = getattr(HFEngine, "close", lambda self: None)
    monkeypatch.setattr(HFEngine, "close", lambda self: (calls.append(id(self)), base(self))[1], raising=False)
    return calls


def test_the_trainer_closes_its_engine_when_done_and_on_error(model_dir, tmp_path, closes):
    from r3rl.training.trainer import train

    train(tiny_config(model_dir, tmp_path / "ok", steps=1, save_every=0), show_progress=False)
    assert len(closes) == 1
    from tests.trainer_fixtures import BrokenRetryCoinTask

    cfg = tiny_config(model_dir, tmp_path / "broken", steps=1, save_every=0)
    cfg.task.name = "tests.trainer_fixtures:BrokenRetryCoinTask"
    cfg.rollout.max_verifier_errors = 0
    BrokenRetryCoinTask.raised = 0
    with pytest.raises(VerifierError):
        train(cfg, show_progress=False)
    assert len(closes) == 2


def test_the_trainer_closes_its_engine_when_setup_fails_after_opening_it(model_dir, tmp_path, closes, monkeypatch):
    import r3rl.training.trainer as trainer

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "build_failure_source", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(tiny_config(model_dir, tmp_path / "run", steps=1), show_progress=False)
    assert len(closes) == 1


@pytest.mark.parametrize("command,target", [("eval", "r3rl.evaluation.accuracy.evaluate_model"),
                                            ("mine", "r3rl.mining.failure_set.mine")])
@pytest.mark.parametrize("error,code", [(KeyboardInterrupt, 130), (OSError("disk full"), 2)])
def test_cli_commands_close_their_engine(model_dir, tmp_path, closes, monkeypatch, command, target, error, code):
    from r3rl.cli import main

    def broken(*a, **k):
        raise error

    monkeypatch.setattr(target, broken)
    cfg = tiny_config(model_dir, tmp_path / "run")
    cfg.eval.output_dir = str(tmp_path / "eval")
    assert main([command, *cli_overrides(cfg)]) == code
    assert len(closes) == 1


def test_the_demo_closes_its_engine_on_ctrl_c(tmp_path, closes, monkeypatch):
    from r3rl.demo.run import run_demo

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("r3rl.evaluation.accuracy.evaluate_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(output_dir=str(tmp_path / "demo"), quick=True)
    assert len(closes) == 1
