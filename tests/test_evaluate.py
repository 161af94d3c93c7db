"""Interval maths against hand-computed values, and the evaluation of acc@1 / acc@2 / control."""

import json

import pytest

from r3rl.config import Config
from r3rl.engine.scripted import ScriptedEngine
from r3rl.evaluation.accuracy import evaluate_model, results_table
from r3rl.rollout import Rollout
from r3rl.evaluation.stats import intervals_overlap, wilson_interval
from r3rl.demo.tiny import build_tokenizer

from tests.test_rollout import EchoTask, script


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        # p = 0.5: centre 0.5, half = 1.96 * sqrt(0.025 + 1.96^2 / 400) / (1 + 1.96^2 / 10)
        (5, 10, 0.23659, 0.76341),
        # zero successes: the interval still has width, upper = (z^2/n) / (1 + z^2/n)
        (0, 10, 0.0, 0.27754),
        (10, 10, 0.72246, 1.0),
        # p = 0.8, n = 100: centre (0.8 + 0.019207) / 1.0384146 = 0.788902; half = 0.0807172 / 1.0384146 = 0.077731
        (80, 100, 0.71117, 0.86663),
    ],
)
def test_wilson_interval_by_hand(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-5)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    assert intervals_overlap((0.1, 0.3), (0.3, 0.5)) and not intervals_overlap((0.1, 0.29), (0.3, 0.5))


def test_evaluate_counts_and_files(tmp_path):
    tok = build_tokenizer()
    cfg = Config()
    cfg.eval.num_examples, cfg.eval.samples_per_example = 3, 2

    def scr(prompt, j):
        # example 'apple' passes at once; the others fail, and sample 0's reflection is the useful one
        if "Say the word apple" in prompt and prompt.count("<|im_start|>user") == 1:
            return "apple"
        return script(prompt, j)

    res = evaluate_model(Rollout(ScriptedEngine(tok, scr), EchoTask(), cfg.generation, cfg.rollout), cfg.eval, cfg.seed, output_dir=tmp_path, model_name="scripted", show_progress=False)
    # 6 trials: 2 pass at once; of the 4 failures, the reflection of each failure is sampled with
    # j = 0 (group of one), so every retry passes; the control never passes.
    assert res["trials"] == 6 and res["acc@1"] == pytest.approx(2 / 6)
    assert res["acc@2"] == 1.0 and res["acc@2_no_reflection"] == pytest.approx(2 / 6)
    assert res["acc@1_ci"] == pytest.approx(list(wilson_interval(2, 6)))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["acc@2"] == 1.0 and saved["model"] == "scripted" and saved["task"] == "echo"
    lines = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    failed = [r for r in lines if not r["attempt_ok"]]
    assert all(r["reflection_text"] == "I should say the word." and r["retry_ok"] for r in failed)
    assert all(r["no_reflection_retry_text"] == "cherry" and not r["no_reflection_retry_ok"] for r in failed)
    assert all(r["reflection_text"] == "" for r in lines if r["attempt_ok"])
    assert results_table(res).row_count == 3
