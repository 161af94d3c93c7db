"""Interval maths against hand-computed values, and the evaluation of acc@1 / acc@2 / control."""

import json
import re

import pytest

from r3rl.environment import prompts

from r3rl.config import Config
from r3rl.demo.tiny import build_tokenizer
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment.rollout import Rollout
from r3rl.evaluation import stats
from r3rl.evaluation.accuracy import evaluate_model, trial_statistics
from r3rl.evaluation.result import EvalResult
from r3rl.evaluation.stats import wilson_interval
from r3rl.reporting.console_tables import results_table

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


# (word, sample) trials whose reflection is the useful one, so the retry passes; and the one trial whose
# no-reflection control passes. Outcomes differ per trial, so records mapped to the wrong trial show.
USEFUL = {("pear", 1), ("plum", 0)}
CONTROL_PASSES = {("plum", 1)}


def per_trial_script(prompt: str, j: int) -> str:
    word = re.search(r"Say the word (\w+)", prompt).group(1)
    users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, flags=re.S)
    if len(users) == 1:  # first attempt: apple passes on sample 0 only; the attempt text names its sample
        return "apple" if word == "apple" and j == 0 else f"banana {j}"
    sample = int(re.search(r"banana (\d)", prompt).group(1))  # the failed attempt in the conversation
    if "Reflect on what went wrong" in users[-1]:
        return "I should say the word." if (word, sample) in USEFUL else "No idea."
    if users[-1] == prompts.DEFAULT_RETRY_NO_REFLECTION:
        return word if (word, sample) in CONTROL_PASSES else "cherry"
    reflection = re.findall(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", prompt, flags=re.S)[-1]
    return word if reflection == "I should say the word." else "cherry"


def test_evaluate_counts_and_files(tmp_path):
    tok = build_tokenizer()
    cfg = Config()
    cfg.eval.num_examples, cfg.eval.samples_per_example = 3, 2
    roll = Rollout(ScriptedEngine(tok, per_trial_script), EchoTask(), cfg.generation, cfg.rollout)
    # chunks of 2 examples: a trial's records must also survive the chunk boundary
    result = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path, model_name="scripted", show_progress=False,
                            chunk_size=2)
    res = result.to_json()
    assert result.acc["acc@2"].hits == 3 and result.value("acc@2") == res["acc@2"] and result.trials == 6
    # 6 trials: 1 passes at once; of the 5 failures, 2 retries pass after a useful reflection, 1 control passes
    assert res["trials"] == 6 and res["acc@1"] == pytest.approx(1 / 6)
    assert res["acc@2"] == pytest.approx(3 / 6) and res["acc@2_no_reflection"] == pytest.approx(2 / 6)
    assert res["retry_fix_rate"] == pytest.approx(2 / 5)
    # 2 samples per example: a bootstrap over the 3 examples (only apple passes, 1 sample of 2), whose
    # resamples hold 0 or 3 copies of apple with probability (2/3)^3 and (1/3)^3, both above 2.5%
    assert res["acc@1_ci"] == pytest.approx([0.0, 0.5])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == res and saved["model"] == "scripted" and saved["task"] == "echo"
    assert list(EvalResult.from_json(saved).to_json().items()) == list(saved.items())
    lines = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    words = {"w0": "apple", "w1": "pear", "w2": "plum"}
    assert [(r["example_id"], r["sample"]) for r in lines] == [(f"w{i}", j) for i in range(3) for j in range(2)]
    for r in lines:
        trial = (words[r["example_id"]], r["sample"])
        if trial == ("apple", 0):
            assert r["attempt_ok"] and r["reflection_text"] == "" and not r["retry_ok"], r
            continue
        assert not r["attempt_ok"] and r["attempt_text"] == f"banana {r['sample']}", r
        useful = trial in USEFUL
        assert r["reflection_text"] == ("I should say the word." if useful else "No idea."), r
        assert r["retry_ok"] == useful and r["retry_text"] == (trial[0] if useful else "cherry"), r
        assert r["no_reflection_retry_ok"] == (trial in CONTROL_PASSES), r
    assert results_table(result).row_count == 3


def _records(pattern, samples=1):
    """episodes.jsonl rows from (attempt_ok, retry_ok, control_ok) triples, `samples` per example."""
    return [
        {"example_id": f"ex{i // samples}", "sample": i % samples, "attempt_ok": a, "retry_ok": r,
         "no_reflection_retry_ok": c}
        for i, (a, r, c) in enumerate(pattern)
    ]


def test_trial_statistics_one_sample_per_example_by_hand():
    # 20 trials: 6 pass at once; of 14 failures, 7 are fixed by the reflection only, 1 by the
    # control only, 2 by both, 4 by neither -> acc@2 vs control discordant pairs b=1, c=7.
    pattern = [(True, False, False)] * 6 + [(False, True, False)] * 7 + [(False, False, True)] * 1 \
        + [(False, True, True)] * 2 + [(False, False, False)] * 4
    out = trial_statistics(_records(pattern), control=True)
    cmp = out["comparisons"]["acc@2_vs_no_reflection"]
    assert (cmp["first_only"], cmp["second_only"]) == (1, 7)
    assert cmp["p_value"] == 0.0703125 and cmp["test"] == stats.MCNEMAR
    assert cmp["difference"] == pytest.approx(6 / 20)  # acc@2 15/20 minus control 9/20
    # both = 6 + 2, control only = 1, acc@2 only = 7, neither = 4
    assert cmp["difference_ci"] == list(stats.newcombe_paired_interval(8, 1, 7, 4))
    assert out["intervals"] == stats.WILSON
    assert out["acc@2_ci"] == list(wilson_interval(15, 20))
    assert out["retry_fix_rate_ci"] == list(wilson_interval(9, 14))  # 9 of the 14 failures fixed


def test_trial_statistics_clusters_several_samples_per_example():
    # 10 examples x 4 samples, all-or-nothing per example: 5 examples fixed by reflection in
    # every sample, the control never fixes anything.
    pattern = [(False, True, False)] * 20 + [(False, False, False)] * 20
    out = trial_statistics(_records(pattern, samples=4), control=True)
    assert out["intervals"] == stats.bootstrap_name()
    lo, hi = out["acc@2_ci"]
    w_lo, w_hi = wilson_interval(20, 40)
    assert hi - lo > 1.7 * (w_hi - w_lo)  # 10 independent units, not 40
    cmp = out["comparisons"]["acc@2_vs_no_reflection"]
    assert cmp["test"] == stats.MCNEMAR_CLUSTERED
    assert cmp["p_value"] == pytest.approx(2 / 32)  # five examples of +4, signs flipped jointly
    assert out["retry_fix_rate_interval"] == stats.bootstrap_name()
    assert out["retry_fix_rate_ci"][0] < 0.5 < out["retry_fix_rate_ci"][1]


def _apple_at_once(prompt, j):
    """'apple' passes its first attempt; the others fail, and their reflection makes the retry pass."""
    first_turn = prompt.count("<|im_start|>user") == 1
    return "apple" if "Say the word apple" in prompt and first_turn else script(prompt, j)


def test_evaluate_writes_the_paired_comparison(tmp_path):
    cfg = Config()
    cfg.eval.num_examples, cfg.eval.samples_per_example = 3, 2
    roll = Rollout(ScriptedEngine(build_tokenizer(), _apple_at_once), EchoTask(), cfg.generation, cfg.rollout)
    res = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path, show_progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == res.to_json()
    cmp = saved["comparisons"]["acc@2_vs_no_reflection"]
    # two failing examples, each with both samples fixed by the reflection and not by the control:
    # per-example differences [2, 2] -> sign-flip p = 2/4
    assert (cmp["pairs"], cmp["examples"], cmp["first_only"], cmp["second_only"]) == (6, 3, 0, 4)
    assert cmp["p_value"] == pytest.approx(0.5) and cmp["test"] == stats.MCNEMAR_CLUSTERED
    assert cmp["difference"] == pytest.approx(4 / 6)
    assert saved["intervals"] == stats.bootstrap_name() and res.retry_fix_rate_ci == [1.0, 1.0]
    assert "p = 0.5 (exact McNemar test clustered by example" in str(results_table(res).caption)


def test_metrics_sort_by_their_number_not_its_first_digit():
    res = {"task": "t", "model": "m", "trials": 1}
    for key in ("acc@10", "acc@2", "acc@1", "acc@3", "acc@2_no_reflection", "acc@11"):
        res.update({key: 0.5, f"{key}_ci": [0.1, 0.9]})
    table = results_table(EvalResult.from_json(res))
    assert list(table.columns[0].cells) == ["acc@1 (first try)", "acc@2 (retry after reflection)",
                                            "acc@2 without reflection (control)", "acc@3", "acc@10", "acc@11"]


def test_evaluation_never_changes_the_shared_rollout():
    """The rollout (a trainer's) keeps its own generation settings while an evaluation with other ones runs."""
    cfg = Config()
    cfg.eval.num_examples, cfg.eval.temperature, cfg.eval.max_attempt_tokens = 3, 0.0, 9
    seen = []

    def watching(prompt, j):
        seen.append((roll.gen is cfg.generation, roll.gen.attempt_temperature, roll.gen.max_attempt_tokens))
        return script(prompt, j)

    engine = ScriptedEngine(build_tokenizer(), watching)
    roll = Rollout(engine, EchoTask(), cfg.generation, cfg.rollout)
    evaluate_model(roll, cfg.eval, cfg.seed, show_progress=False)
    assert seen and set(seen) == {(True, 1.0, 256)}
    assert {(p.temperature, p.max_new_tokens) for _, p in engine.calls if p.max_new_tokens == 9} == {(0.0, 9)}


def test_acc_at_k_with_several_rounds_from_one_predicate(tmp_path):
    """rollout.rounds=3: acc@3 and acc@4 count passes within 2 and 3 rounds, in results and intervals alike."""
    cfg = Config()
    cfg.eval.num_examples, cfg.rollout.rounds = 3, 3

    def third_time(prompt, j):  # every retry fails but the one after the third reflection, for 'pear' only
        users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, flags=re.S)
        if len(users) == 1:
            return "banana"
        if "Reflect on what went wrong" in users[-1]:
            return "hmm"
        word = re.search(r"Say the word (\w+)", prompt).group(1)
        return word if word == "pear" and prompt.count("Reflect on what went wrong") == 3 else "cherry"

    roll = Rollout(ScriptedEngine(build_tokenizer(), third_time), EchoTask(), cfg.generation, cfg.rollout)
    res = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path, show_progress=False).to_json()
    assert (res["acc@1"], res["acc@2"], res["acc@3"], res["acc@4"]) == (0.0, 0.0, 0.0, pytest.approx(1 / 3))
    assert res["acc@4_ci"] == list(wilson_interval(1, 3)) and res["acc@3_ci"] == list(wilson_interval(0, 3))
    rows = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert [len(r["rounds"]) for r in rows] == [3, 3, 3]


class ClassifyingEcho(EchoTask):
    """EchoTask whose failures carry a class: "even" / "odd" for an attempt "banana <j>", else "wrong_word"."""

    failure_classes = {"even": "said banana, even sample", "odd": "said banana, odd sample", "wrong_word": "another word"}

    def verify(self, ex, completion):
        v = super().verify(ex, completion)
        if v.ok:
            return v
        m = re.search(r"banana (\d)", completion)
        cls = ("even" if int(m.group(1)) % 2 == 0 else "odd") if m else "wrong_word"
        return type(v)(False, v.reason, cls)


def test_results_carry_the_class_tables_and_diagnostics_by_hand(tmp_path):
    from r3rl.reporting.console_tables import class_table

    tok = build_tokenizer()
    cfg = Config()
    cfg.eval.num_examples, cfg.eval.samples_per_example = 3, 2
    roll = Rollout(ScriptedEngine(tok, per_trial_script), ClassifyingEcho(), cfg.generation, cfg.rollout)
    result = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path, model_name="scripted", show_progress=False)
    res = result.to_json()
    # failed trials: (apple,1) odd, (pear,0) even, (pear,1) odd, (plum,0) even, (plum,1) odd;
    # useful reflections on (pear,1) and (plum,0); the control passes on (plum,1) only
    classes = res["by_class"]["classes"]
    assert list(classes) == ["odd", "even"] and res["by_class"]["failures"] == 5
    odd, even = classes["odd"], classes["even"]
    assert (odd["failures"], odd["retry"]["passes"], odd["control"]["passes"]) == (3, 1, 1)
    assert (even["failures"], even["retry"]["passes"], even["control"]["passes"]) == (2, 1, 0)
    # odd: one trial passes only with reflection (pear,1), one only without (plum,1): b = c = 1, p = 1
    assert (odd["gain"]["first_only"], odd["gain"]["second_only"], odd["gain"]["p_value"]) == (1, 1, 1.0)
    assert even["gain"]["difference"] == pytest.approx(1 / 2)
    # the failed retries said "cherry": outcome class wrong_word
    assert res["transitions"]["retry"]["counts"] == {"odd": {"pass": 1, "wrong_word": 2}, "even": {"pass": 1, "wrong_word": 1}}
    assert res["transitions"]["no_reflection_retry"]["counts"]["odd"] == {"pass": 1, "wrong_word": 2}
    diag = res["reflection_diagnostics"]
    assert diag["n"] == 5 and diag["most_repeated"][0] == {"count": 3, "text": "No idea."}
    assert diag["retry_success"]["repeated"]["passes"] == 2  # "I should say the word." x2 and "No idea." x3 all repeat
    assert json.loads((tmp_path / "results.json").read_text())["by_class"] == res["by_class"]
    assert class_table(result).row_count == 2


def test_no_class_tables_for_a_task_that_does_not_classify(tmp_path):
    from r3rl.reporting.console_tables import class_table

    tok = build_tokenizer()
    cfg = Config()
    cfg.eval.num_examples = 3
    roll = Rollout(ScriptedEngine(tok, per_trial_script), EchoTask(), cfg.generation, cfg.rollout)
    res = evaluate_model(roll, cfg.eval, cfg.seed, show_progress=False)
    assert res.by_class is None and res.transitions is None and class_table(res) is None
    assert "by_class" not in res.to_json() and res.reflection_diagnostics["n"] == 2
