"""The training console: one compact line per logged step and one per periodic evaluation."""

from __future__ import annotations

import re

from r3rl.training.console import eval_line, step_line
from r3rl.training.metrics import MetricsRow

from tests.trainer_fixtures import tiny_config


def _row(**kw) -> MetricsRow:
    base = dict(step=3, loss=1e-8, reward_mean=0.4375, retry_success=0.4375, zero_adv_frac=0.25, kl=1.23e-4,
                reflection_len=41.6, tokens_per_s=412.3, step_time=5.04, episodes=16)
    base.update(kw)
    return MetricsRow(**base)


def test_a_step_line_has_the_numbers_a_trl_user_reads():
    line = step_line(_row(), steps=20)
    assert "\n" not in line
    assert line.startswith("step 3/20")
    for part in ("reward 0.438", "retry 0.438", "zero-adv 0.25", "kl 1.2e-04", "refl 42 tok", "412 tok/s", "5.0s"):
        assert part in line, (part, line)


def test_no_kl_without_a_reference_model():
    assert "kl" not in step_line(_row(kl=0.0), steps=20, kl=False)


def test_phase_times_show_only_when_measured():
    """Rows without phase timing (older runs, the hf engine's weight sync) print none of those fields."""
    line = step_line(_row(), steps=20)
    assert not re.search(r"\b(gen|policy|ref|opt|sync) \d", line), line
    row = _row(weight_sync_s=0.31)
    for name, value in (("time_generation_s", 3.12), ("time_policy_s", 1.2), ("time_reference_s", 0.4),
                        ("time_optimizer_s", 0.05)):
        setattr(row, name, value)  # fields being added to MetricsRow; read with getattr
    line = step_line(row, steps=20)
    for part in ("gen 3.1s", "policy 1.2s", "ref 0.4s", "opt 0.1s", "sync 0.3s"):
        assert part in line, (part, line)


def test_missing_values_do_not_break_the_line():
    line = step_line(MetricsRow(step=1), steps=2)
    assert line.startswith("step 1/2") and "None" not in line


def test_an_eval_line_only_for_steps_that_evaluated():
    assert eval_line(_row(), steps=20) is None
    line = eval_line(_row(eval={"acc@1": 0.25, "acc@2": 0.5}), steps=20)
    assert line == "eval step 3/20: acc@1 0.250  acc@2 0.500"


def test_training_prints_a_line_every_log_every_steps_and_the_periodic_evals(model_dir, tmp_path, capsys):
    from r3rl.training.trainer import train

    cfg = tiny_config(model_dir, tmp_path / "run", steps=4, save_every=0, eval_every=2, eval_examples=4, log_every=2)
    train(cfg, show_progress=False)
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["2/4", "4/4"], out
    evals = [line for line in out.splitlines() if line.startswith("eval step")]
    assert [e.split()[2] for e in evals] == ["2/4:", "4/4:"], out
    assert all("acc@2" in e for e in evals)
