"""metrics.jsonl rows through one schema (MetricsRow): what the trainer writes is what the report reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from r3rl.reporting import document
from r3rl.training.metrics import MAX_KEYS, SUM_KEYS, MetricsRow, column, doc

FIXTURE = Path(__file__).parent / "fixtures" / "run"
DIAGNOSTICS = ("reflection_distinct_1", "reflection_distinct_2", "reflection_distinct_3", "reflection_duplicate_share",
               "reflection_repeated_share", "reflection_len_p50", "reflection_len_p90", "reflection_len_max",
               "reflection_repeated_retry_success", "reflection_unique_retry_success", "reflection_most_repeated")


def test_reflection_diagnostics_fill_the_row_by_hand():
    from r3rl.evaluation.diagnostics import reflection_diagnostics

    # "a b" three times (retries pass, pass, fail) and "c d e" once (fails): bigrams: a-b x3, c-d, d-e -> 3 distinct of 5
    diag = reflection_diagnostics(["a b", "A  b", "a b", "c d e"], retry_ok=[True, True, False, False],
                                  token_ids=[range(2), range(2), range(2), range(5)])
    row = MetricsRow(step=1)
    row.add_diagnostics(diag)
    assert row.reflection_distinct_2 == pytest.approx(3 / 5)
    assert row.reflection_duplicate_share == pytest.approx(1 - 2 / 4)  # 2 distinct texts of 4
    assert row.reflection_repeated_share == pytest.approx(3 / 4)
    assert (row.reflection_len_p50, row.reflection_len_p90, row.reflection_len_max) == (2, 5, 5)
    assert row.reflection_repeated_retry_success == pytest.approx(2 / 3) and row.reflection_unique_retry_success == 0
    assert row.reflection_most_repeated == [{"text": "a b", "count": 3}]
    assert "reflection_most_repeated" not in row.numbers() and row.numbers()["reflection_distinct_2"] == pytest.approx(0.6)


def test_from_totals_means_and_json_line():
    totals = dict.fromkeys(SUM_KEYS + MAX_KEYS, 0.0) | dict(
        loss=0.4, episodes=16, reward=4, retry_ok=6, zero_adv=8, kl_tokens=2.0, tokens=40, reflection_len=80,
        gen_tokens=200, clip_tokens=4, diff_tokens=40, diff_sum=0.2, diff_max=0.05)
    row = MetricsRow.from_totals(3, totals, processes=2, lr=1e-5, grad_norm=None, gen_time=2.0, step_time=3.0,
                                 verifier_errors=1, diff_comparable=True)
    row.eval = {"acc@1": 0.5}
    line = row.to_json()
    assert line == {"step": 3, "loss": 0.2, "reward_mean": 0.25, "retry_success": 0.375, "zero_adv_frac": 0.5,
                    "kl": 0.05, "clip_frac": 0.1, "reflection_len": 5.0, "episodes": 16, "lr": 1e-5, "grad_norm": None,
                    "tokens_per_s": 100.0, "step_time": 3.0, "verifier_errors": 1, "logprob_diff_mean": 0.005,
                    "logprob_diff_max": 0.05, **dict.fromkeys(DIAGNOSTICS), "weight_sync_s": None,
                    **dict.fromkeys(("time_generation_s", "time_policy_s", "time_reference_s", "time_optimizer_s")),
                    "eval/acc@1": 0.5}
    assert MetricsRow.from_json(json.loads(json.dumps(line))) == row
    assert "grad_norm" not in row.numbers() and row.numbers()["eval/acc@1"] == 0.5
    # not comparable (reflection temperature != 1): the mismatch is not measured, so it is None, not 0
    off = MetricsRow.from_totals(3, totals, processes=1, lr=1e-5, grad_norm=1.0, gen_time=1.0, step_time=1.0,
                                 verifier_errors=0, diff_comparable=False)
    assert off.logprob_diff_mean is None and off.logprob_diff_max is None


def test_rows_of_older_runs_load():
    old = {"step": 2, "loss": 0.1, "reward_mean": 0.5, "kl_coef": 0.01, "eval/acc@2": 0.4}  # no clip_frac, ...
    row = MetricsRow.from_json(old)
    assert row.clip_frac is None and row.verifier_errors is None and row.eval == {"acc@2": 0.4}
    assert row.extra == {"kl_coef": 0.01}
    assert {k: v for k, v in row.to_json().items() if v is not None} == old


def test_the_report_names_only_columns_the_trainer_writes():
    read = set(document.TRAIN_PLOTS) | set(document.TRAIN_TABLE_ONLY) | set(document.EVAL_METRIC_KEYS)
    assert all(column(k) == k for k in read)
    with pytest.raises(KeyError, match="not a metrics.jsonl column"):
        column("reward")  # the trainer's internal total, not a column
    assert doc("logprob_diff_max").startswith("Largest |training log-prob - sampling log-prob|")


def test_report_of_a_metrics_file_with_unknown_and_missing_columns(tmp_path):
    from r3rl.reporting.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE / "config.yaml", run)
    rows = [{"step": s, "reward_mean": 0.1 * s, "a_future_column": [1, 2], "eval/acc@1": 0.3} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "3 optimizer steps logged" in md
    assert {p.stem for p in (run / "report").glob("*.png")} == {"reward_mean", "eval_accuracy"}
