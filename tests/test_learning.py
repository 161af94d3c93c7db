"""Learning, not just parameter motion: GRPO on reflection tokens makes retries succeed more often.

The built-in demo model (r3rl/demo/model) solves `addition` problems sloppily at once and,
after a failure, usually reflects generically ("I should be more careful") and sometimes works the
sum out column by column; only a worked-out reflection makes the retry reliably right. So the retry
can pass (reliably) only when the reflection carries the right information, and the reward can rise
only if credit reaches the reflection tokens: the task, the attempt and the retry get no gradient.
"""

from __future__ import annotations

import json

import pytest

from r3rl.demo.run import demo_config
from r3rl.training.trainer import train


def _mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.slow
def test_reward_rises_within_bounded_steps(tmp_path):
    run = tmp_path / "learn"
    cfg = demo_config(run, overrides=[
        "train.steps=24", "train.batch_size=16", "train.micro_batch_size=16", "train.save_every=0",
        "train.log_episodes_per_step=128", "failures.num_examples=256",
    ])
    train(cfg, show_progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = _mean([r["reward_mean"] for r in rows[:4]]), _mean([r["reward_mean"] for r in rows[-4:]])
    assert last - first >= 0.25, f"reward {first:.3f} -> {last:.3f}"
    # the mechanism: worked-out reflections ("Let me add column by column...") took over
    eps = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    def working_share(steps):
        chosen = [e for e in eps if e["step"] in steps]
        return _mean([e["reflection_text"].startswith("Let me add") for e in chosen])
    assert working_share({21, 22, 23, 24}) - working_share({1, 2, 3, 4}) >= 0.3
