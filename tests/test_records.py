"""The evaluation record: written by evaluation, read back by reporting through the same schema,
with the verifier's failure classes."""

from __future__ import annotations

import json
import re

import pytest

from r3rl.config import Config
from r3rl.demo.tiny import build_tokenizer
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment.rollout import Rollout
from r3rl.evaluation.accuracy import evaluate_model
from r3rl.evaluation.records import RoundRecord, TrialRecord, read_trials
from r3rl.reporting.run import ReportError, load_eval
from r3rl.types import Verdict

from tests.test_rollout import EchoTask


class ClassifyingEcho(EchoTask):
    """EchoTask whose failures carry a class: 'fruit' for a wrong fruit, 'other' for anything else."""

    def verify(self, ex, completion):
        v = super().verify(ex, completion)
        if v.ok:
            return v
        return Verdict(False, v.reason, "fruit" if completion.strip() in ("banana", "cherry") else "other")


def _script(prompt, j):
    users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, flags=re.S)
    word = re.search(r"Say the word (\w+)", prompt).group(1)
    if len(users) == 1:
        return "apple" if word == "apple" else "banana"
    if "Reflect on what went wrong" in users[-1]:
        return "hmm"
    return "cherry" if "Reflect on what went wrong" in prompt else "nothing"  # retry: a fruit; control: other


def test_evaluation_writes_failure_classes_and_reporting_reads_them(tmp_path):
    cfg = Config()
    cfg.eval.num_examples = 3
    roll = Rollout(ScriptedEngine(build_tokenizer(), _script), ClassifyingEcho(), cfg.generation, cfg.rollout)
    evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path, show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    classes = [(r["attempt_class"], r["retry_class"], r["no_reflection_retry_class"]) for r in rows]
    assert classes == [("", "", ""), ("fruit", "fruit", "other"), ("fruit", "fruit", "other")]  # apple passed at once
    ev = load_eval(tmp_path)
    assert ev.episodes == read_trials(tmp_path / "episodes.jsonl")
    assert [t.to_json() for t in ev.episodes] == rows  # the same schema both ways
    assert ev.episodes[1].attempt_class == "fruit" and ev.episodes[1].get("retry_class") == "fruit"


def test_records_of_earlier_versions_and_short_ones_read():
    old = {"example_id": "a", "sample": 1, "attempt_ok": True, "retry_ok": None, "no_reflection_retry_ok": None,
           "reflection_text": "", "group": "simple", "something_else": 3}
    t = TrialRecord.from_json(old)
    assert (t.retry_ok, t.attempt_class, t.group, t.get("something_else")) == (False, "", "simple", 3)
    assert t.passed_within(2) and t.passed_control()
    short = TrialRecord.from_json({"example_id": 7, "attempt_ok": False, "retry_ok": True})
    assert (short.example_id, short.sample, short.passed_within(1), short.passed_within(2)) == ("7", 0, False, True)
    rounds = TrialRecord("x", rounds=(RoundRecord("r", "t", False), RoundRecord("r", "t", True)))
    assert [rounds.passed_within(k) for k in (1, 2, 3)] == [False, False, True]
    assert TrialRecord.from_json(rounds.to_json()) == rounds


@pytest.mark.parametrize("row,expect", [
    ({"example_id": "a"}, "missing field(s) attempt_ok"),
    ({"example_id": "a", "attempt_ok": "yes"}, "'attempt_ok' must be true, false or null"),
    ({"example_id": "a", "attempt_ok": True, "sample": "0"}, "'sample' must be an integer"),
    ({"example_id": "a", "attempt_ok": True, "retry_class": 3}, "'retry_class' must be a string"),
])
def test_a_bad_episode_line_names_file_line_and_field(tmp_path, row, expect):
    (tmp_path / "results.json").write_text('{"acc@1": 0.5}')
    good = json.dumps({"example_id": "g", "attempt_ok": True})
    (tmp_path / "episodes.jsonl").write_text(good + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ReportError, match=re.escape(f"episodes.jsonl, line 2: {expect}")):
        load_eval(tmp_path)
