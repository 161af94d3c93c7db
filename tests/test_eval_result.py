"""EvalResult (r3rl/evaluation/result.py): results.json of any r3rl version reads into fields and
writes back as the same object, key order included."""

from __future__ import annotations

import json
from pathlib import Path

from r3rl.evaluation.result import Accuracy, EvalResult

FIXTURE = Path(__file__).parent / "fixtures" / "run"


def test_an_old_results_json_loads_and_writes_back_the_same():
    """The fixture is a results.json of the first r3rl (no trials, hits, weights or statistics)."""
    for name in ("eval_before", "eval_after"):
        raw = json.loads((FIXTURE / name / "results.json").read_text())
        res = EvalResult.from_json(raw)
        assert res.task == "countdown" and res.samples == 2 and res.weights is None and res.trials is None
        assert res.acc["acc@2"].hits is None and res.value("acc@2") == raw["acc@2"]
        assert res.acc["acc@2"].ci == raw["acc@2_ci"] and res.value("acc@3") is None
        assert res.extra == {}
        assert list(res.to_json().items()) == list(raw.items())


def test_unknown_keys_are_kept_in_extra_and_written_back():
    raw = {"task": "t", "future_field": {"x": 1}, "acc@1": 0.5, "acc@1_ci": [0.1, 0.9], "acc@1_hits": 1,
           "acc@3": 0.75, "acc@1_other": 2, "weights": "files:ab", "by_class": {"classes": {}}}
    res = EvalResult.from_json(raw)
    assert res.extra == {"future_field": {"x": 1}, "acc@1_other": 2}
    assert res.acc == {"acc@1": Accuracy(0.5, [0.1, 0.9], 1), "acc@3": Accuracy(0.75)}
    assert res.weights == "files:ab" and res.by_class == {"classes": {}}
    assert res.to_json() == raw


def test_a_written_result_keeps_the_key_order_of_results_json():
    res = EvalResult(task="t", model="m", n=2, samples=1, trials=2, weights="files:ab",
                     acc={"acc@1": Accuracy(0.5, [0.1, 0.9], 1), "acc@2": Accuracy(1.0, [0.3, 1.0], 2)},
                     verifier_errors=0, retry_fix_rate=1.0, intervals="wilson", reflection_diagnostics={"n": 1})
    out = res.to_json()
    assert list(out) == ["task", "model", "n", "samples", "trials", "weights", "acc@1", "acc@1_ci", "acc@1_hits",
                         "acc@2", "acc@2_ci", "acc@2_hits", "verifier_errors", "retry_fix_rate", "intervals",
                         "reflection_diagnostics"]
    again = EvalResult.from_json(json.loads(json.dumps(out)))
    assert again == res and json.dumps(again.to_json()) == json.dumps(out)
