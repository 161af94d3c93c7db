"""Tests for `r3rl report`: a recorded run folder rendered to report.md / report.html / PNGs.

The fixture (tests/fixtures/run) is a 12-step Countdown run with 10 examples x 2
samples evaluated before and after training. Expected figures below are worked
out by hand from its files: acc@2 is 5/20 before and 15/20 after, whose Wilson
95% intervals [11.2%, 46.9%] and [53.1%, 88.8%] do not overlap.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import struct
from pathlib import Path

import pytest
from rich.console import Console

from r3rl.reporting.report import (
    Accuracy,
    ReportError,
    build_report,
    load_metrics,
    significance_sentence,
    summary_table,
    truncate,
)

FIXTURE = Path(__file__).parent / "fixtures" / "run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CURVES = {"reward_mean", "retry_success", "reflection_len", "zero_adv_frac", "kl", "eval_accuracy"}
ALL_PNGS = CURVES | {"accuracy_before_after"}


def _copy_run(dest: Path) -> Path:
    shutil.copytree(FIXTURE, dest)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The fixture run rendered once (rendering plots is the slow part): (run_dir, md, html)."""
    run = _copy_run(tmp_path_factory.mktemp("built") / "run")
    html_path = build_report(run)
    assert html_path == run / "report.html"
    return run, (run / "report.md").read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


@pytest.mark.parametrize("which", ["eval_before", "eval_after"])
def test_fixture_results_agree_with_its_episodes(which: str) -> None:
    # The report's expected numbers are only meaningful if the recorded run is self-consistent.
    results = json.loads((FIXTURE / which / "results.json").read_text())
    eps = [json.loads(line) for line in (FIXTURE / which / "episodes.jsonl").read_text().splitlines()]
    assert len(eps) == results["n"] * results["samples"] == 20
    counts = {
        "acc@1": sum(e["attempt_ok"] for e in eps),
        "acc@2": sum(e["attempt_ok"] or e["retry_ok"] is True for e in eps),
        "acc@2_no_reflection": sum(e["attempt_ok"] or e["no_reflection_retry_ok"] is True for e in eps),
    }
    for key, k in counts.items():
        assert results[key] == pytest.approx(k / 20)
        assert results[f"{key}_ci"] == pytest.approx(_wilson(k, 20), abs=1e-4)
    assert all((e["reflection_text"] == "") == e["attempt_ok"] for e in eps)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pngs_exist_and_are_real_images(built: tuple[Path, str, str]) -> None:
    run, _, _ = built
    pngs = {p.stem: p.read_bytes() for p in (run / "report").glob("*.png")}
    assert set(pngs) == ALL_PNGS
    for name, data in pngs.items():
        width, height = _png_size(data)
        assert width >= 500 and height >= 300, name
        assert len(data) > 10_000, f"{name}.png is too small to hold a plot"
    leftovers = [p.name for p in run.rglob("*.tmp")]
    assert leftovers == [], "atomic writes left temp files behind"


def test_html_is_self_contained_and_embeds_every_png(built: tuple[Path, str, str]) -> None:
    run, _, html = built
    assert html.count("data:image/png;base64,") == len(ALL_PNGS)
    for png in (run / "report").glob("*.png"):
        assert base64.b64encode(png.read_bytes()).decode() in html, png.name
    assert not re.search(r"https?:", html), "report.html must not reference anything outside itself"
    assert not re.search(r"<(script|link|iframe)\b", html)
    targets = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert len(targets) == len(ALL_PNGS)
    assert all(t.startswith("data:image/png;base64,") for t in targets)
    assert "<style>" in html


def test_markdown_links_each_png(built: tuple[Path, str, str]) -> None:
    run, md, _ = built
    links = re.findall(r"!\[[^\]]*\]\((report/[^)]+\.png)\)", md)
    assert {Path(link).stem for link in links} == ALL_PNGS
    assert all((run / link).is_file() for link in links)


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_report_figures_match_the_run(built: tuple[Path, str, str], fmt: str) -> None:
    _, md, html = built
    text = md if fmt == "md" else html
    assert "acc@2 rose from 25.0% to 75.0% and the 95% intervals do not overlap" in text
    assert "[11.2%, 46.9%]" in text and "[53.1%, 88.8%]" in text
    assert "+50.0 pts" in text  # acc@2 change
    assert "+15.0 pts" in text and "+20.0 pts" in text  # acc@1 and the no-reflection control
    assert "12 optimizer steps logged (steps 1 to 12)" in text
    assert "0.5625" in text  # final reward_mean, 36/64
    assert "Qwen/Qwen2.5-1.5B-Instruct" in text and "countdown" in text
    assert "14 of 20 first attempts failed after training and 9 of those retries passed" in text


def test_markdown_results_row(built: tuple[Path, str, str]) -> None:
    _, md, _ = built
    assert "| acc@2 (retry after reflection) | 25.0% | [11.2%, 46.9%] | 75.0% | [53.1%, 88.8%] | +50.0 pts |" in md


def test_example_table_pairs_before_and_after_and_escapes(built: tuple[Path, str, str]) -> None:
    _, md, html = built
    table = html.split('<table class="long">')[1].split("</table>")[0]
    rows = table.split("<tbody>")[1].count("<tr>")
    assert rows == 8  # 14 failed first attempts, capped
    # countdown-0000 passed its first attempt in both samples after training: never shown.
    assert "countdown-0000" not in table
    first = table.split("<tbody>")[1].split("</tr>")[0]
    assert "countdown-0001 #0" in first
    assert "My previous answer was wrong." in first  # its reflection before training
    assert "evaluates to 92, not 52" in first  # its reflection after training
    assert "before: attempt fail, retry pass" in first and "after: attempt fail, retry pass" in first
    # Model output carries <answer> tags: escaped in both files, never live markup.
    assert "<answer>" not in html and "&lt;answer&gt;" in table
    assert "<answer>" not in md
    assert "chars…]" in table  # the long reflection of countdown-0002 was shortened


def test_overlapping_intervals_are_called_not_significant(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for d in ("eval_before", "eval_after"):  # results only: no curves to draw, fast
        (run / d).mkdir(parents=True)
        shutil.copy(FIXTURE / d / "results.json", run / d / "results.json")
    after = json.loads((run / "eval_after" / "results.json").read_text())
    after.update({"acc@2": 0.4, "acc@2_ci": [0.2188, 0.6134]})  # 8/20
    (run / "eval_after" / "results.json").write_text(json.dumps(after))
    build_report(run)
    for text in ((run / "report.md").read_text(), (run / "report.html").read_text()):
        assert "acc@2 rose from 25.0% to 40.0%, but the 95% intervals overlap" in text
        assert "so this run does not show a significant effect" in text
        assert "do not overlap" not in text


@pytest.mark.parametrize(
    ("before", "after", "expected", "absent"),
    [
        ((0.6, (0.5, 0.7)), (0.3, (0.2, 0.4)), "acc@2 fell from 60.0% to 30.0% and the 95% intervals do not overlap", "rose"),
        ((0.6, (0.5, 0.7)), (0.3, (0.2, 0.4)), "training made it worse", "improvement"),
        ((0.5, (0.4, 0.6)), (0.45, (0.35, 0.55)), "acc@2 fell from 50.0% to 45.0%, but the 95% intervals overlap", "do not"),
        # Touching intervals share a point: that is overlap, not significance.
        ((0.3, (0.2, 0.4)), (0.5, (0.4, 0.6)), "but the 95% intervals overlap", "do not overlap"),
        ((0.3, (0.2, 0.4)), (0.3, (0.2, 0.4)), "acc@2 stayed at 30.0%", "rose"),
        ((0.3, None), (0.5, (0.4, 0.6)), "no 95% interval was recorded, so significance cannot be judged", "overlap"),
        ((0.3, (0.2, 0.4)), None, "cannot be compared: there is no after-training result", "rose"),
    ],
)
def test_significance_sentence(before, after, expected: str, absent: str) -> None:
    b = Accuracy(*before) if before else None
    a = Accuracy(*after) if after else None
    sentence = significance_sentence("acc@2", b, a)
    assert expected in sentence
    assert absent not in sentence


def test_malformed_metrics_line_names_file_and_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.1}\n\n{"step": 2, "loss": \n{"step": 3}\n')
    with pytest.raises(ReportError, match=r"metrics\.jsonl, line 3: invalid JSON"):
        build_report(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ReportError, match=r"metrics\.jsonl, line 2: expected a JSON object"):
        build_report(run)
    assert not (run / "report.html").exists()


def test_malformed_eval_episode_names_its_file(tmp_path: Path) -> None:
    run = _copy_run(tmp_path / "run")
    path = run / "eval_after" / "episodes.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]  # a line cut short, as by a crash mid-write
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=r"eval_after/episodes\.jsonl, line 5"):
        build_report(run)
    (run / "eval_before" / "results.json").write_text('{"acc@1": 0.15,\n "acc@2": }\n')
    with pytest.raises(ReportError, match=r"eval_before/results\.json, line 2: invalid JSON"):
        build_report(run)


def test_run_without_eval_dirs_still_renders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE / "config.yaml", run)
    # One metric kept: the full set of curves is checked on the fixture already, and plots are slow.
    lines = (FIXTURE / "metrics.jsonl").read_text().splitlines()
    kept = [{k: v for k, v in json.loads(line).items() if k in ("step", "reward_mean")} for line in lines]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    html = build_report(run).read_text()
    md = (run / "report.md").read_text()
    assert {p.stem for p in (run / "report").glob("*.png")} == {"reward_mean"}
    for text in (md, html):
        assert "No eval results" in text
        assert "no examples to show" in text
        assert "12 optimizer steps logged" in text
    caption = str(summary_table(run).caption)
    assert "No eval_before/ or eval_after/ results" in caption


def test_run_with_only_after_eval_and_no_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "eval_after", run / "eval_after")
    md = (build_report(run).parent / "report.md").read_text()
    assert "eval_before/results.json is missing, so before and after cannot be compared" in md
    assert "acc@2 cannot be compared: there is no before-training result." in md
    assert "No training metrics: metrics.jsonl is missing or empty." in md
    assert "(not in eval_before)" in md
    assert "| acc@2 (retry after reflection) | — | — | 75.0% | [53.1%, 88.8%] | — |" in md
    assert {p.stem for p in (run / "report").glob("*.png")} == {"accuracy_before_after"}


def test_summary_table_shows_before_after_and_verdict() -> None:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(summary_table(FIXTURE))
    text = out.getvalue()
    row = next(line for line in text.splitlines() if "acc@2 (retry after reflection)" in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        "acc@2 (retry after reflection)", "25.0% [11.2%, 46.9%]", "75.0% [53.1%, 88.8%]", "+50.0 pts",
    ]
    assert "acc@2 rose from 25.0% to 75.0% and the 95% intervals do not overlap" in text


def test_resumed_steps_merge_and_lines_without_step_are_noted(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "reward_mean": 0.1},
        {"step": 2, "reward_mean": 0.2, "kl": 0.01},
        {"step": 2, "reward_mean": 0.25},  # resumed from the step-1 checkpoint: newer value wins
        {"note": "no step here"},
        {"step": 3, "reward_mean": 0.3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics, notes = load_metrics(path)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[1] == {"step": 2, "reward_mean": 0.25, "kl": 0.01}
    assert notes == ["metrics.jsonl: 1 line(s) without an integer 'step' were ignored."]


def test_truncate_keeps_head_and_tail_at_word_boundaries() -> None:
    assert truncate("  short text  ", 50) == "short text"
    text = " ".join(f"w{i:03d}" for i in range(200))  # 999 characters
    out = truncate(text, 120)
    head, rest = out.split(" […")
    dropped, tail = rest.split(" chars…] ")
    assert text.startswith(head) and text.endswith(tail)
    assert int(dropped) == len(text) - len(head) - len(tail)
    assert len(head) + len(tail) <= 120
    assert re.fullmatch(r"(w\d{3} ?)+", head + " " + tail)  # no word cut in half
    assert tail.endswith("w199")
