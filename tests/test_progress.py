"""Eval and mining progress moves as generations finish, not once per chunk, and changes no result."""

from __future__ import annotations

import pytest

import r3rl.runtime.progress
from r3rl.config import Config
from r3rl.demo.tiny import build_tokenizer
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment.rollout import Rollout
from r3rl.evaluation.accuracy import evaluate_model
from r3rl.mining.failure_set import mine

from tests.test_evaluate import per_trial_script
from tests.test_mining import ParityTask
from tests.test_rollout import EchoTask


class TwelveWords(EchoTask):
    def load_examples(self, split="train", n=None, seed=0):
        words = "apple pear plum fig lime kiwi date lemon mango peach melon grape".split()
        return [{"id": f"w{i}", "word": w} for i, w in enumerate(words)][:n]


@pytest.fixture()
def bar_positions(monkeypatch):
    """(bar position, generations made so far) at every bar update of a GenerationProgress."""
    seen: list[tuple[float, int]] = []
    engines: list = []
    make = r3rl.runtime.progress.progress_bar

    def recording_bar(*args, **kw):
        bar = make(*args, **kw)
        update = bar.update

        def update_and_record(n=1):
            out = update(n)
            seen.append((bar.n, len(engines[0].calls) if engines else 0))
            return out

        bar.update = update_and_record
        return bar

    monkeypatch.setattr(r3rl.runtime.progress, "progress_bar", recording_bar)
    return seen, engines


def test_a_small_eval_moves_before_its_one_chunk_ends(tmp_path, bar_positions):
    """12 examples in one 64-example chunk: the bar used to sit at 0/12 until the end."""
    seen, engines = bar_positions
    cfg = Config()
    cfg.eval.num_examples = 12
    engine = ScriptedEngine(build_tokenizer(), per_trial_script)
    engines.append(engine)
    evaluate_model(Rollout(engine, TwelveWords(), cfg.generation, cfg.rollout), cfg.eval, cfg.seed,
                   output_dir=tmp_path, show_progress=True)
    total_generations = len(engine.calls)
    moving = [n for n, made in seen if 0 < n < 12 and made < total_generations]
    assert len(moving) >= 12, seen  # at least once per example's worth of generations
    positions = [n for n, _ in seen]
    assert positions == sorted(positions) and positions[-1] == 12


def test_mining_moves_per_finished_attempt(tmp_path, bar_positions):
    seen, engines = bar_positions
    cfg = Config()
    cfg.failures.num_examples, cfg.failures.attempts_per_example = 10, 2
    cfg.failures.path = str(tmp_path / "failures.jsonl")
    engine = ScriptedEngine(build_tokenizer(), lambda p, j: "odd")
    engines.append(engine)
    mine(Rollout(engine, ParityTask(), cfg.generation, cfg.rollout), cfg.failures, cfg.seed, show_progress=True)
    moving = [n for n, made in seen if 0 < n < 10 and made < 20]
    assert len(moving) >= 10, seen
    assert seen[-1][0] == 10


def test_progress_changes_no_result(tmp_path):
    """The same files, byte for byte, with the bar and its hooks on and off."""
    outs = []
    for show in (False, True):
        cfg = Config()
        cfg.eval.num_examples, cfg.eval.samples_per_example = 5, 2
        roll = Rollout(ScriptedEngine(build_tokenizer(), per_trial_script), EchoTask(), cfg.generation, cfg.rollout)
        out = tmp_path / f"show-{show}"
        evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, show_progress=show, chunk_size=2)
        outs.append([(out / name).read_bytes() for name in ("results.json", "episodes.jsonl")])
    assert outs[0] == outs[1]


def test_tokens_move_the_bar_while_a_batch_decodes_together():
    """Rows of one batch finish together: the tokens against the stage's limit move the bar before that."""
    from types import SimpleNamespace

    from r3rl.runtime.progress import GenerationProgress

    engine = SimpleNamespace(on_tokens=None, on_generated=None)
    with GenerationProgress(engine, total=12, desc="t") as progress:
        progress.chunk(12, stages=2)
        progress.stage("attempt", generations=12, tokens=12 * 10)
        engine.on_tokens(12 * 5)  # half the stage's token limit
        assert progress.bar.n == pytest.approx(3.0)
        for _ in range(12):
            engine.on_generated(1)  # all rows ended early: the stage is done
        assert progress.bar.n == pytest.approx(6.0)
        progress.stage("control", generations=4, tokens=40)
        engine.on_generated(1)
        assert progress.bar.n == pytest.approx(6.0 + 6 * 0.25)
        progress.update(12)
        assert progress.bar.n == 12
    assert engine.on_tokens is None and engine.on_generated is None
