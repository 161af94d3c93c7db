"""`r3rl forgetting`: differences of lm-eval scores with their standard errors, offline on a local task."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from r3rl.evaluation.forgetting import INSTALL_HINT, PAPER_TASKS, compare, paired_diff

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"


def _run(results: dict, samples: dict, groups: dict | None = None) -> dict:
    return {"results": results, "samples": samples, "group_subtasks": groups or {},
            "n-samples": {t: {"effective": len(s)} for t, s in samples.items()}}


def _samples(values: list[float], metric: str = "acc", filt: str = "none") -> list[dict]:
    return [{"doc_id": i, "filter": filt, metric: v} for i, v in enumerate(values)]


def test_paired_difference_worked_by_hand():
    # before 1 0 1 1, after 1 1 0 1: d = 0 1 -1 0, mean 0, var = 2/3, se = sqrt(2/3 / 4) = 0.408248
    before = _run({"t": {"acc,none": 0.75, "acc_stderr,none": 0.25}}, {"t": _samples([1, 0, 1, 1])})
    after = _run({"t": {"acc,none": 0.75, "acc_stderr,none": 0.25}}, {"t": _samples([1, 1, 0, 1])})
    (row,) = compare(before, after, ["t"])
    assert row.paired and row.n == 4 and row.diff == 0.0
    assert row.diff_se == pytest.approx(math.sqrt(2 / 3 / 4), abs=1e-12)
    assert (row.before, row.before_se, row.after, row.after_se) == (0.75, 0.25, 0.75, 0.25)
    # the same answers: the paired standard error is exactly zero (unpaired would say 0.354)
    (same,) = compare(before, before, ["t"])
    assert same.paired and same.diff == 0.0 and same.diff_se == 0.0


def test_group_pools_its_leaves_and_corpus_metrics_stay_unpaired():
    # group g = size-weighted mean of a (2 docs) and b (2 docs); bleu is corpus-level (not the mean of its docs)
    def run(a, b, g, bleu):
        return _run(
            {"a": {"acc,none": sum(a) / 2}, "b": {"acc,none": sum(b) / 2},
             "g": {"acc,none": g, "acc_stderr,none": 0.3, "bleu,none": bleu, "bleu_stderr,none": 0.04}},
            {"a": [{**s, "bleu": 0.5} for s in _samples(a)], "b": [{**s, "bleu": 0.5} for s in _samples(b)]},
            {"g": ["a", "b"]},
        )

    before, after = run([1, 0], [0, 0], 0.25, 0.30), run([1, 1], [1, 0], 0.75, 0.20)
    acc, bleu = compare(before, after, ["g"])
    # pooled d over (a,0) (a,1) (b,0) (b,1) = 0 1 1 0: mean 0.5, var 1/3, se = sqrt(1/12)
    assert acc.paired and acc.n == 4 and acc.diff == pytest.approx(0.5)
    assert acc.diff_se == pytest.approx(math.sqrt(1 / 12), abs=1e-12)
    assert not bleu.paired and bleu.diff == pytest.approx(-0.10)
    assert bleu.diff_se == pytest.approx(math.sqrt(0.04**2 + 0.04**2), abs=1e-12)


def test_paired_needs_the_same_documents():
    assert paired_diff({0: 1.0, 1: 0.0}, {0: 1.0, 2: 0.0}) is None
    assert paired_diff({0: 1.0}, {0: 0.0}) is None


@pytest.mark.slow  # indexing lm-eval's ~13k built-in task YAMLs takes 30-60 s
def test_default_tasks_are_the_papers_and_exist_in_lm_eval():
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    assert PAPER_TASKS == ("mmlu_pro", "gsm8k", "hellaswag", "minerva_math")
    known = set(TaskManager().all_tasks)
    assert set(PAPER_TASKS) <= known


def test_missing_lm_eval_is_one_sentence(monkeypatch, capsys):
    from r3rl.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    assert main(["forgetting", "--model", "demo", "--model", "demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"r3rl forgetting: error: {INSTALL_HINT}" and "r3rl[lm-eval]" in err


@pytest.fixture()
def after_model(tmp_path):
    """The demo model with its output layer nudged: a different 'after' model with other answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r3rl.demo import model_path as demo_model_path

    model = AutoModelForCausalLM.from_pretrained(demo_model_path(), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.layers[-1].parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    out = tmp_path / "after"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(demo_model_path()).save_pretrained(out)
    return out


def test_cli_on_a_local_lm_eval_task(tmp_path, after_model, monkeypatch, capsys):
    pytest.importorskip("lm_eval")
    from r3rl.cli import main

    monkeypatch.chdir(FIXTURES)  # the task YAML names its JSONL relative to the working directory
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps the table to the terminal width
    out = tmp_path / "forgetting.json"
    rc = main(["forgetting", "--model", "demo", "--model", str(after_model), "--tasks", "r3rl_tiny_group",
               "--include-path", str(FIXTURES), "--only-include-path", "--device", "cpu", "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "forgetting: demo ->" in printed and "r3rl_tiny_gr" in printed and "paired" in printed
    res = json.loads(out.read_text())
    (row,) = res["rows"]  # the group's acc (the leaves' acc_norm is not aggregated by the group)
    b, a = res["before"]["results"]["r3rl_tiny_group"], res["after"]["results"]["r3rl_tiny_group"]
    assert row["metric"] == "acc,none" and row["n"] == 24 and row["paired"]
    assert (row["before"], row["after"]) == (b["acc,none"], a["acc,none"])
    assert row["diff"] == pytest.approx(a["acc,none"] - b["acc,none"], abs=1e-12)
    assert (row["before_se"], row["after_se"]) == (b["acc_stderr,none"], a["acc_stderr,none"])
    assert row["before"] != row["after"]  # the nudged model answers differently, so the check measures something
    assert 0 < row["diff_se"] < 1


def test_unknown_task_fails_before_loading_a_model(capsys):
    pytest.importorskip("lm_eval")
    from r3rl.cli import main

    rc = main(["forgetting", "--model", "no/such-model", "--model", "demo", "--tasks", "r3rl_nope",
               "--include-path", str(FIXTURES), "--only-include-path"])
    err = capsys.readouterr().err
    assert rc == 2 and "lm-eval knows no task 'r3rl_nope'" in err and "Traceback" not in err
