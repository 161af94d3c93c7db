"""Tests for `r3rl report`: a recorded run folder rendered to report.md / report.html / PNGs.

The fixture (tests/fixtures/run) is a 12-step Countdown run with 10 examples x 2
samples evaluated before and after training (beta = 0.001, one retry per reflection).
Expected figures below are worked out by hand from its files: paired by (example_id,
sample), acc@2 is 5/20 before and 15/20 after; 10 trials pass only after training and
none only before, spread over examples as eight examples +1, one +2 and one 0, so the
clustered exact McNemar (sign-flip over examples) gives p = 2 / 2^9 = 0.00390625.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
from pathlib import Path

import pytest
from rich.console import Console

from r3rl.evaluation.stats import MCNEMAR, NEWCOMBE, PairedComparison
from r3rl.reporting.compare import Comparison
from r3rl.reporting.report import ReportError, build_report, summary_table
from r3rl.reporting.run import load_metrics
from r3rl.reporting.wording import significance_sentence, truncate

FIXTURE = Path(__file__).parent / "fixtures" / "run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# retry_success equals reward_mean at every step (one retry per reflection): one panel, not two
CURVES = {"reward_mean", "reflection_len", "zero_adv_frac", "kl", "eval_accuracy"}
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
    assert ("acc@2 rose from 25.0% before training to 75.0% after training: paired difference +50.0 pts"
            in text)
    assert ("exact McNemar test clustered by example (two-sided sign-flip test over examples): p = 0.00391 "
            "(10 of 20 paired trials passed only after training, 0 only before training): "
            "a significant improvement at the 5% level") in text
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
    section = html.split("Examples: failed first attempts after training")[1]  # other sections hold long tables too
    table = section.split('<table class="long">')[1].split("</table>")[0]
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
    assert "<answer>" not in md.replace(r"\<answer>", "")  # backslash-escaped in Markdown (tests/test_report_text.py)
    assert "chars…]" in table  # the long reflection of countdown-0002 was shortened


def _evals_only(dest: Path, *, samples: set[int] = frozenset({0, 1})) -> Path:
    """The fixture's two evals (results and the episodes of the given samples), no metrics: no curves, fast."""
    for d in ("eval_before", "eval_after"):
        (dest / d).mkdir(parents=True)
        shutil.copy(FIXTURE / d / "results.json", dest / d / "results.json")
        eps = [json.loads(line) for line in (FIXTURE / d / "episodes.jsonl").read_text().splitlines()]
        (dest / d / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps if e["sample"] in samples))
    return dest


def test_one_sample_per_example_uses_exact_mcnemar_and_newcombe(tmp_path: Path) -> None:
    # Sample 0 only: acc@2 is 3/10 before and 8/10 after, 5 trials pass only after and none only
    # before -> exact McNemar p = 2 / 2^5 = 0.0625, not significant although +50 pts.
    # Newcombe by hand: Wilson(3, 10) = [0.1078, 0.6032], Wilson(8, 10) = [0.4902, 0.9433],
    # phi = (3*2 - 0 - 10/2) / sqrt(3*7*8*2) = 0.0546; lower = 0.5 - sqrt(0.3098^2 - 2 phi 0.3098*0.3032
    # + 0.3032^2) = 0.0785, upper = 0.5 + sqrt(0.1433^2 - 2 phi 0.1433*0.1922 + 0.1922^2) = 0.7334.
    run = _evals_only(tmp_path / "run", samples={0})
    build_report(run)
    for text in ((run / "report.md").read_text(), (run / "report.html").read_text()):
        assert ("acc@2 rose from 30.0% before training to 80.0% after training: paired difference +50.0 pts "
                "(95% CI [+7.8, +73.3] pts; Newcombe") in text
        assert ("exact McNemar test (two-sided): p = 0.0625 (5 of 10 paired trials passed only after training, "
                "0 only before training); so this run does not show a significant effect at the 5% level") in text
        assert "clustered" not in text and "overlap do not" not in text


def test_trials_pair_by_example_and_sample_not_by_line_order(tmp_path: Path) -> None:
    # Reversing eval_after's lines must not change any paired figure.
    run = _evals_only(tmp_path / "run")
    path = run / "eval_after" / "episodes.jsonl"
    path.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))
    caption = str(summary_table(run).caption)
    assert "p = 0.00391 (10 of 20 paired trials passed only after training, 0 only before training)" in caption
    # A trial missing from one eval is left out and said to be.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[1:]))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "of 19 paired trials" in md
    assert "1 trial(s) appear in only one of eval_before and eval_after" in md


def test_no_episodes_means_no_verdict(tmp_path: Path) -> None:
    run = _evals_only(tmp_path / "run")
    (run / "eval_before" / "episodes.jsonl").unlink()
    caption = str(summary_table(run).caption)
    assert caption == ("acc@2 cannot be compared: the paired test needs eval_before/episodes.jsonl, "
                       "which is missing or empty.")
    build_report(run)
    md = (run / "report.md").read_text()
    assert "| acc@2 | before training" not in md and "| acc@2 in eval_after |" in md
    assert "| acc@2 in eval_before |" not in md


def _cmp(first: float, second: float, b: int, c: int, p: float, n: int = 20) -> Comparison:
    diff = second - first
    result = PairedComparison(pairs=n, examples=n, first_rate=first, second_rate=second, first_only=b,
                              second_only=c, difference=diff, difference_ci=(diff - 0.1, diff + 0.1),
                              p_value=p, test=MCNEMAR, interval=NEWCOMBE)
    return Comparison("acc@2", "before training", "after training", result)


@pytest.mark.parametrize(
    ("cmp", "expected", "absent"),
    [
        (_cmp(0.6, 0.3, 7, 1, 0.0703125), "acc@2 fell from 60.0% before training to 30.0% after training", "rose"),
        (_cmp(0.6, 0.3, 7, 1, 0.0703125), "p = 0.0703 (1 of 20 paired trials passed only after training, "
         "7 only before training); so this run does not show a significant effect", "drop"),
        (_cmp(0.6, 0.2, 9, 1, 0.021484375), "p = 0.0215 (1 of 20", "does not show"),
        (_cmp(0.6, 0.2, 9, 1, 0.021484375), "a significant drop at the 5% level: it got worse", "improvement"),
        (_cmp(0.2, 0.6, 1, 9, 0.021484375), "paired difference +40.0 pts (95% CI [+30.0, +50.0] pts; Newcombe",
         "drop"),
        (_cmp(0.2, 0.6, 1, 9, 0.021484375), "exact McNemar test (two-sided): p = 0.0215", "overlap"),
        (_cmp(0.2, 0.6, 1, 9, 0.021484375), ": a significant improvement at the 5% level.", "does not show"),
        # exactly at the level is not below it
        (_cmp(0.2, 0.6, 1, 9, 0.05), "does not show a significant effect", "a significant improvement"),
        (_cmp(0.3, 0.3, 2, 2, 1.0), "acc@2 stayed at 30.0% (before training and after training)", "rose"),
        (Comparison("acc@2", "before training", "after training", None, "there is no after-training result"),
         "acc@2 cannot be compared: there is no after-training result.", "p ="),
    ],
)
def test_significance_sentence(cmp: Comparison, expected: str, absent: str) -> None:
    sentence = significance_sentence(cmp)
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
    # within eval_after, acc@2 and the control are still paired: 7 trials fixed only by reflection
    assert "| acc@2 | before training" not in md
    assert "| acc@2 in eval_after | without reflection (control) → with reflection | 40.0% | 75.0% |" in md
    assert "p = 0.0156 (7 of 20 paired trials passed only with reflection" in md
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
    caption = " ".join(text.split())  # rich wraps the caption
    assert "acc@2 rose from 25.0% before training to 75.0% after training: paired difference +50.0 pts" in caption
    assert "p = 0.00391 (10 of 20 paired trials passed only after training, 0 only before training)" in caption


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


def _metrics_run(dest: Path, rows: list[dict], beta: float | None = 0.0) -> Path:
    """A run folder with only metrics.jsonl (and config.yaml when beta is given)."""
    dest.mkdir(parents=True)
    (dest / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, **r}) + "\n" for i, r in enumerate(rows)))
    if beta is not None:
        (dest / "config.yaml").write_text(f"train:\n  beta: {beta}\n")
    build_report(dest)
    return dest


def _pngs(run: Path) -> set[str]:
    return {p.stem for p in (run / "report").glob("*.png")}


def _texts(run: Path) -> tuple[str, str]:
    return (run / "report.md").read_text(), (run / "report.html").read_text()


def test_kl_is_not_measured_when_beta_is_zero(tmp_path: Path) -> None:
    rows = [{"kl": 0.0, "reflection_len": 20.0 + i} for i in range(4)]
    run = _metrics_run(tmp_path / "beta0", rows, beta=0.0)
    assert _pngs(run) == {"reflection_len"}  # no flat-zero KL curve
    md, html = _texts(run)
    assert "| kl | KL estimate to the reference model | not measured (beta = 0) | not measured (beta = 0) | — |" in md
    assert "KL to the reference model: not measured (beta = 0), so it is not plotted" in html
    # No beta in config.yaml and zeros everywhere: it cannot be called a measurement either.
    run = _metrics_run(tmp_path / "nobeta", rows, beta=None)
    assert _pngs(run) == {"reflection_len"}
    assert "not measured (0 at every step and config.yaml gives no beta)" in _texts(run)[0]


def test_kl_is_plotted_when_measured_even_at_zero(tmp_path: Path) -> None:
    run = _metrics_run(tmp_path / "beta", [{"kl": 0.0}, {"kl": 0.0}, {"kl": 0.002}], beta=0.001)
    assert _pngs(run) == {"kl"}
    md, _ = _texts(run)
    assert "| kl | KL estimate to the reference model | 0 | 0.002 | 3 |" in md and "not measured" not in md
    run = _metrics_run(tmp_path / "beta_zeros", [{"kl": 0.0}, {"kl": 0.0}], beta=0.001)
    assert _pngs(run) == {"kl"}  # measured as 0 is a measurement


def test_reward_and_retry_success_share_one_panel_only_when_equal(tmp_path: Path) -> None:
    same = [{"reward_mean": v, "retry_success": v} for v in (0.25, 0.5, 0.75)]
    run = _metrics_run(tmp_path / "same", same)
    assert _pngs(run) == {"reward_mean"}
    md, html = _texts(run)
    assert "equal to retry_success at every step (one retry per reflection)" in md
    assert "| retry_success |" not in md
    assert "Mean reflection reward = retry success rate" in html
    # Several retries per reflection: the reward is a mean of retries, retry_success a share of them.
    differ = [{"reward_mean": v, "retry_success": v + (0.01 if i == 2 else 0.0)} for i, v in enumerate((0.25, 0.5, 0.75))]
    run = _metrics_run(tmp_path / "differ", differ)
    assert _pngs(run) == {"reward_mean", "retry_success"}
    md, _ = _texts(run)
    assert "| retry_success | share of retries that passed | 0.25 | 0.76 | 3 |" in md
    assert "equal to retry_success" not in md


def test_tiny_loss_is_shown_and_explained(tmp_path: Path) -> None:
    run = _metrics_run(tmp_path / "tiny", [{"loss": 6.51925802230835e-09}, {"loss": -1.4901161193847656e-08}])
    md, html = _texts(run)
    assert "| loss | policy loss | 6.52e-09 | -1.49e-08 | 2 |" in md  # not 0.0000
    assert "The policy loss stays within ±1.49e-08" in md
    assert "advantages are normalised to mean zero inside each group" in html
    run = _metrics_run(tmp_path / "big", [{"loss": 0.0213}, {"loss": -0.0043}])
    md, _ = _texts(run)
    assert "| loss | policy loss | 0.0213 | -0.0043 | 2 |" in md
    assert "stays within" not in md


def test_a_run_with_no_learning_signal_is_a_warning(tmp_path: Path) -> None:
    run = _metrics_run(tmp_path / "dead", [{"zero_adv_frac": 1.0}] * 3)
    md, html = _texts(run)
    warning = "Warning: no learning signal in this run. At every one of its 3 steps every group had zero advantage"
    assert f"> **{warning}" in md
    assert md.index(warning) < md.index("## Run")  # the first thing a reader sees
    assert f'<p class="warning">{warning}' in html
    run = _metrics_run(tmp_path / "some", [{"zero_adv_frac": 0.5}, {"zero_adv_frac": 1.0}, {"zero_adv_frac": 0.25}])
    md, _ = _texts(run)
    assert "Warning" not in md
    assert "At 1 of 3 steps every group had zero advantage (no learning signal at those steps), first at step 2." in md


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "holds no run to report on: there is no metrics.jsonl and neither eval_before/results.json "
             "nor eval_after/results.json exists."),
        ({"config.yaml": "seed: 0\n", "metrics.jsonl": "\n"},
         "holds no run to report on: metrics.jsonl is empty and neither"),
        ({"results.json": "{}", "episodes.jsonl": ""}, "holds a single evaluation (results.json), not a run"),
    ],
)
def test_a_folder_without_a_run_is_an_error(tmp_path: Path, files: dict[str, str], message: str) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    (run / "eval_before").mkdir()  # an eval folder without results does not count
    for name, text in files.items():
        (run / name).write_text(text)
    with pytest.raises(ReportError) as err:
        build_report(run)
    assert str(err.value) == f"{run} {message}" or str(err.value).startswith(f"{run} {message}")
    assert not (run / "report.md").exists() and not (run / "report.html").exists() and not (run / "report").exists()


def test_cli_report_on_an_empty_folder_prints_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from r3rl.cli import main

    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"r3rl report: error: {tmp_path} holds no run to report on")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_templates_ship_in_the_wheel() -> None:
    import ast  # tomllib is Python 3.11+, and the project supports 3.10

    section = (Path(__file__).parents[1] / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    globs = ast.literal_eval(re.search(r"^r3rl\s*=\s*(\[.*?\])", section, re.M | re.S).group(1))
    templates = sorted((Path(__file__).parents[1] / "r3rl" / "reporting" / "templates").glob("*"))
    assert {t.name for t in templates} == {"report.md.j2", "report.html.j2"}
    for t in templates:
        rel = t.relative_to(Path(__file__).parents[1] / "r3rl")
        assert any(rel.match(g) for g in globs), f"{rel} is not in [tool.setuptools.package-data]"


def test_a_difference_reads_the_same_in_every_table() -> None:
    # 0.5225 - 0.495 is 0.027499999... in floating point, 11/400 is 0.0275: both are +2.75 points
    from r3rl.reporting.run import Accuracy
    from r3rl.reporting.wording import fmt_change, fmt_pts

    assert fmt_change(Accuracy(0.495, None), Accuracy(0.5225, None)) == fmt_pts(11 / 400) == "+2.8 pts"
