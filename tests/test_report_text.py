"""What the report and compare files say: Markdown that reads as text, counts that explain themselves,
human labels, and rate curves on a fixed 0-1 axis."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from r3rl.reporting import plots
from r3rl.reporting.render import _md_cell, _md_text

from tests.test_side_by_side import BASE, _run

FIXTURE = Path(__file__).parent / "fixtures" / "run"
LIVE_TAG = re.compile(r"(?<!\\)<[A-Za-z/!?]")  # a tag or comment a Markdown viewer would take as HTML


def test_markdown_escapes_tags_but_not_comparisons():
    assert _md_text("p (Holm) = < 0.0001") == "p (Holm) = < 0.0001"
    assert _md_text("1 < 2 and 3 > 2") == "1 < 2 and 3 > 2"
    tagged = _md_text("<answer>40 + 9</answer> & more &amp; <!-- x -->")
    assert "&lt;" not in tagged and not LIVE_TAG.search(tagged)
    assert tagged == r"\<answer>40 + 9\</answer> & more \&amp; \<!-- x -->"
    assert _md_cell("a | b\n<b>") == r"a \| b<br>\<b>"


def test_one_class_tested_is_singular():
    from r3rl.reporting.classes_section import _findings

    gain = {"difference": 0.0, "difference_ci": [0.0, 0.0], "p_value": 1.0, "p_holm": 1.0, "test": "t"}
    table = {"classes": {"wrong_sum": {"gain": gain}}}
    assert "(1 class tested)" in _findings("after", table)
    table["classes"]["format"] = {"gain": gain}
    assert "(2 classes tested)" in _findings("after", table)


def test_compare_names_who_was_right_and_labels_the_plot(tmp_path, monkeypatch):
    from r3rl.reporting.side_by_side import compare_runs, write_comparison

    a = _run(tmp_path, "reflection", BASE, [(True, False)] * 6 + [(False, True)] * 4 + [(True, False)] * 2)
    b = _run(tmp_path, "first_attempt", BASE, [(True, False)] * 2 + [(False, False)] * 9 + [(True, False)])
    seen = {}
    bars = plots.run_bars

    def run_bars(labels, metrics, cells):
        seen["m"] = metrics
        return bars(labels, metrics, cells)

    monkeypatch.setattr(plots, "run_bars", run_bars)
    text = write_comparison(compare_runs([a, b]), tmp_path / "cmp").read_text()
    assert "b / c" not in text
    # base -> reflection on acc@1: 0 trials right only in base, 6 only in reflection
    assert "only base: 0, only reflection: 6" in text
    assert seen["m"] == ["acc@1", "acc@2", "acc@2 without reflection"]
    assert not any("_" in m for m in seen["m"])


@pytest.fixture(scope="module")
def report_md(tmp_path_factory) -> str:
    from r3rl.reporting.report import build_report

    run = tmp_path_factory.mktemp("text") / "run"
    shutil.copytree(FIXTURE, run)
    (run / "metrics.jsonl").unlink()  # no curves: fast
    build_report(run)
    return (run / "report.md").read_text(encoding="utf-8")


def test_report_markdown_reads_as_text(report_md):
    assert "&lt;" not in report_md and "&gt;" not in report_md and "&amp;" not in report_md
    assert not LIVE_TAG.search(report_md.replace("<details>", "").replace("</details>", "")
                               .replace("<summary>", "").replace("</summary>", "").replace("<br>", ""))
    assert r"\<answer>" in report_md  # model output's tags, escaped


def test_report_paired_counts_say_which_side(report_md):
    header = next(line for line in report_md.splitlines() if line.startswith("| comparison |"))
    assert "only second / only first" not in header
    row = next(line for line in report_md.splitlines() if line.startswith("| acc@2 |"))
    # 10 of 20 paired trials passed only after training, 0 only before
    assert "only before training: 0, only after training: 10" in row


def test_report_tables_name_metrics_in_words(report_md):
    paired = report_md.split("### Paired tests")[1].split("\n\n")[1]
    assert "acc@2_no_reflection" not in paired and "| acc@2 without reflection |" in paired


def test_rates_get_a_fixed_axis():
    fig = plots.metric_curve([1, 2, 3], [0.25, 0.55, 0.4], title="t", ylabel="y", rate=True)
    lo, hi = fig.axes[0].get_ylim()
    assert lo <= 0 and 1 <= hi < 1.1 and lo > -0.1
    fig = plots.metric_curve([1, 2, 3], [20.0, 55.0, 40.0], title="t", ylabel="tokens")
    assert fig.axes[0].get_ylim()[0] > 0  # a length keeps its own range


def test_the_report_plots_rewards_and_shares_as_rates(tmp_path, monkeypatch):
    from r3rl.reporting.report import build_report

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    for sub in ("eval_before", "eval_after"):
        shutil.rmtree(run / sub)
    calls = {}
    curve = plots.metric_curve

    def metric_curve(xs, ys, **kw):
        calls[kw["title"]] = kw.get("rate")
        return curve(xs, ys, **kw)

    monkeypatch.setattr(plots, "metric_curve", metric_curve)
    legends = []
    eval_curves = plots.eval_curves

    def eval_curves_seen(series):
        legends.extend(series)
        return eval_curves(series)

    monkeypatch.setattr(plots, "eval_curves", eval_curves_seen)
    build_report(run)
    assert legends == ["acc@1 (first try)", "acc@2 (retry after reflection)"]  # not the metrics.jsonl keys
    rates = {t for t, r in calls.items() if r}
    assert any("reward" in t.lower() for t in rates) and any("zero-advantage" in t.lower() for t in rates)
    assert not any("length" in t.lower() for t in rates)
