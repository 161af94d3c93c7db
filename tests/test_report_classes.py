"""The report's Failure classes and Reflection diagnostics sections, the card summary, and `r3rl compare`'s
per-class tables, on hand-built run folders (tests/class_run_fixtures.py, whose docstring works out the numbers)."""

from __future__ import annotations

import json
from markupsafe import escape  # the escaping jinja2 applies to report.html
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.class_run_fixtures import TEMPLATE, after_records, before_records, class_run, write_eval
from r3rl.reporting.classes_section import NO_CLASSES, failure_class_card
from r3rl.reporting.diagnostics_section import NO_DIAGNOSTICS
from r3rl.reporting.report import ReportError, build_report
from r3rl.reporting.run import load_run
from r3rl.reporting.side_by_side import compare_runs, write_comparison

FIXTURE = Path(__file__).parent / "fixtures" / "run"  # an older run: no failure classes, no diagnostics in metrics

AFTER_ROWS = [
    "| wrong_sum | after | 8 (80.0%) | 87.5% (7/8) [52.9%, 97.8%] | 0.0% (0/8) [0.0%, 32.4%] | +87.5 pts | "
    "[+40.1, +97.8] pts | 0.0156 | 0.0312 |",
    "| no_answer | after | 2 (20.0%) | 50.0% (1/2) [9.5%, 90.5%] | 50.0% (1/2) [9.5%, 90.5%] | +0.0 pts | "
    "[-57.3, +57.3] pts | 1 | 1 |",
]


def _report(run: Path) -> tuple[str, str]:
    build_report(run)
    return (run / "report.md").read_text(encoding="utf-8"), (run / "report.html").read_text(encoding="utf-8")


def _section(text: str, heading: str, level: str = "## ") -> str:
    return text.split(level + heading)[1].split("\n## ")[0]


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    run = class_run(tmp_path_factory.mktemp("classes") / "run")
    md, html = _report(run)
    return run, md, html


def test_per_class_table_before_and_after_by_hand(reported: tuple[Path, str, str]) -> None:
    _, md, _ = reported
    section = _section(md, "Failure classes").split("### First attempts")[0]
    # Rows: class by class (after's order), before then after.
    rows = [line for line in section.splitlines() if line.startswith(("| wrong_sum |", "| no_answer |"))]
    assert [r.split(" | ")[:2] for r in rows] == [["| wrong_sum", "before"], ["| wrong_sum", "after"],
                                                  ["| no_answer", "before"], ["| no_answer", "after"]]
    assert rows[1] == AFTER_ROWS[0] and rows[3] == AFTER_ROWS[1]
    # Before: retry and control pass on the same two trials: no gain, p = 1.
    assert rows[0] == ("| wrong_sum | before | 10 (83.3%) | 20.0% (2/10) [5.7%, 51.0%] | 20.0% (2/10) [5.7%, 51.0%] "
                       "| +0.0 pts | [-23.6, +23.6] pts | 1 | 1 |")
    assert "Holm-Bonferroni over the classes tested (family-wise error rate), within each evaluation" in section
    assert "exact McNemar test (two-sided)" in section
    assert ("After training, the retry after reflection differs significantly from the control (Holm-adjusted, 5% "
            "level) on: wrong_sum (+87.5 pts, p (Holm) = 0.0312) (2 classes tested).") in section
    assert "Before training, no class shows a significant gain" in section
    assert "computed from episodes.jsonl" not in section  # results.json held the tables


def test_first_attempts_before_vs_after_paired_by_trial(reported: tuple[Path, str, str]) -> None:
    _, md, _ = reported
    section = _section(md, "First attempts before vs after training", "### ")
    # pass: 0 -> 2 (e10, e11 only after): McNemar b = 0, c = 2, p = 2 / 4 = 0.5; wrong_sum: 10 -> 8, p = 0.5;
    # no_answer: e10, e11 before only, e8, e9 after only: b = c = 2, p = 1. Holm over 3: 3 * 0.5 -> 1 for all.
    assert "| pass | 0 (0.0%) | 2 (16.7%) | +16.7 pts |" in section
    assert "| wrong_sum | 10 (83.3%) | 8 (66.7%) | -16.7 pts |" in section
    assert "| no_answer | 2 (16.7%) | 2 (16.7%) | +0.0 pts | [-32.7, +32.7] pts | 1 | 1 |" in section
    assert re.search(r"\| pass \|[^\n]*\| 0\.5 \| 1 \|", section)


def test_transition_tables_and_heatmaps(reported: tuple[Path, str, str]) -> None:
    run, md, html = reported
    section = _section(md, "Failure classes")
    assert "| after training: first attempt failed as | pass | wrong_sum | total |" in section
    assert "| wrong_sum | 7 | 1 | 8 |" in section and "| no_answer | 1 | 1 | 2 |" in section
    assert "| before training: first attempt failed as | pass | wrong_sum | no_answer | total |" in section
    assert "| wrong_sum | 2 | 8 | 0 | 10 |" in section and "| no_answer | 0 | 0 | 2 | 2 |" in section
    assert section.index("after training: first") < section.index("before training: first")  # after first
    for name in ("transitions_eval_after", "transitions_eval_before"):
        png = (run / "report" / f"{name}.png").read_bytes()
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 500 and height >= 250
        assert f"report/{name}.png" in md
    # HTML has the same content as the Markdown: the same rows and one data URI per picture.
    assert "<tr><td>wrong_sum</td><td>7</td><td>1</td><td>8</td></tr>" in html
    assert html.count("data:image/png;base64,") == len(list((run / "report").glob("*.png")))


def test_eval_diagnostics_by_hand(reported: tuple[Path, str, str]) -> None:
    _, md, html = reported
    section = _section(md, "Reflection diagnostics")
    # After: 6 copies of a 6-word template and 4 texts of 4, 4, 5, 4 words: lengths 4,4,4,5,6,6,6,6,6,6.
    assert "| reflections (of failed first attempts) | 12 | 10 |" in section
    assert "| length, median (words) | 6 | 6 |" in section
    # distinct-2: 5 distinct bigrams of the template (30 in all) + 13 of the four others: 18 / 43 = 0.4186;
    # distinct-1: 18 distinct words of 53.
    assert "| distinct-2 | 0.5 | 0.4186 |" in section
    assert "| distinct-1 | 0.3 | 0.3396 |" in section
    assert "| duplicate share | 0.0% | 50.0% |" in section and "| repeated share | 0.0% | 60.0% |" in section
    # Repeated (e0..e5) all retried to a pass; the unique ones e6, e8 passed and e7, e9 failed.
    assert "| retry success, repeated reflections | — (no repeated reflection) | 100.0% (6/6) |" in section
    assert "| retry success, unique reflections | 16.7% (2/12) | 50.0% (2/4) |" in section
    assert f"| after training | 6 | {TEMPLATE} |" in section
    assert "<td>after training</td><td>6</td><td>Let me add column by column.</td>" in html


def test_training_diagnostics_curve(reported: tuple[Path, str, str]) -> None:
    run, md, _ = reported
    section = _section(md, "During training", "### ")
    assert ("distinct-2 went from 0.9 at step 1 to 0.2 at step 4; the duplicate share went from 0 at step 1 to 0.75 "
            "at step 4") in section
    assert "| distinct-2 (distinct word bigrams / all) | 0.9 | 0.2 | 4 |" in section
    assert "| reflection length, median (tokens) | 30 | 12 | 4 |" in section
    assert "reflection_repeated_share" not in section and "repeated share" not in section  # not logged: not shown
    assert f"| 12 | {TEMPLATE} |" in section and "copies at step 4" in section
    assert (run / "report" / "reflection_diversity.png").stat().st_size > 10_000


def test_tables_are_computed_from_episodes_when_results_json_lacks_them(tmp_path: Path, reported) -> None:
    md, _ = _report(class_run(tmp_path / "run", tables=False, metrics=False))
    section = _section(md, "Failure classes")
    assert "results.json has no per-class table, so it was computed from episodes.jsonl." in section
    for row in AFTER_ROWS:
        assert row in section
    assert section.split("computed from episodes.jsonl.")[1] == _section(reported[1], "Failure classes")


def test_results_json_tables_are_used_when_the_episodes_have_no_classes(tmp_path: Path) -> None:
    run = class_run(tmp_path / "run", metrics=False)
    for d in ("eval_before", "eval_after"):
        path = run / d / "episodes.jsonl"
        eps = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in e.items() if not k.endswith("_class")}) + "\n"
                                for e in eps))
    md, _ = _report(run)
    section = _section(md, "Failure classes")
    assert AFTER_ROWS[0] in section and "| wrong_sum | 7 | 1 | 8 |" in section
    assert "First attempts before vs after training" not in section  # needs the trials' classes


def test_a_run_without_classes_gets_one_sentence_not_empty_tables(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    md, html = _report(run)
    section = _section(md, "Failure classes")
    assert section.strip() == f"> **Note:** {NO_CLASSES}"
    assert f'<p class="note">{escape(NO_CLASSES)}</p>' in html
    assert not list((run / "report").glob("transitions_*.png"))
    assert not (run / "report" / "reflection_diversity.png").exists()  # metrics.jsonl has no diagnostics
    # The reflections are in the episodes, so the eval diagnostics are computed all the same.
    assert "| reflections (of failed first attempts) | 17 | 14 |" in _section(md, "Reflection diagnostics")


@pytest.mark.parametrize("tables", [False, True])  # True: results.json's tables hold only "unclassified"
def test_a_task_that_does_not_classify_gets_the_sentence_too(tmp_path: Path, tables: bool) -> None:
    run = tmp_path / "run"
    for name, recs in (("eval_before", before_records()), ("eval_after", after_records())):
        write_eval(run / name, [dict(r, attempt_class="", retry_class="", no_reflection_retry_class="") for r in recs],
                   tables=tables)
    assert failure_class_card(load_run(run)) == NO_CLASSES
    md, _ = _report(run)
    assert _section(md, "Failure classes").strip() == f"> **Note:** {NO_CLASSES}"


def test_no_reflections_anywhere_is_one_sentence(tmp_path: Path) -> None:
    run = tmp_path / "run"
    recs = [dict(r, reflection_text="") for r in after_records()]
    write_eval(run / "eval_after", recs, tables=False)
    md, _ = _report(run)
    assert _section(md, "Reflection diagnostics").strip() == f"> **Note:** {NO_DIAGNOSTICS}"


def test_without_a_control_the_gain_is_not_tested(tmp_path: Path) -> None:
    # The evaluation ran no control but wrote no_reflection_retry_ok false: not a control that never passes.
    run = tmp_path / "run"
    write_eval(run / "eval_after", after_records(), tables=False, control=False)
    md, _ = _report(run)
    section = _section(md, "Failure classes")
    assert "| wrong_sum | after | 8 (80.0%) | 87.5% (7/8) [52.9%, 97.8%] | not run | — | — | — | — |" in section
    assert "After training the evaluation ran no control, so no gain is tested." in section


def test_a_malformed_by_class_names_the_file(tmp_path: Path) -> None:
    run = class_run(tmp_path / "run", metrics=False)
    path = run / "eval_after" / "results.json"
    data = json.loads(path.read_text())
    data["by_class"] = [1, 2]
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"eval_after/results.json: 'by_class' must be an object with 'classes'"):
        build_report(run)


def test_model_card_summary(tmp_path: Path) -> None:
    card = failure_class_card(load_run(class_run(tmp_path / "run", metrics=False)))
    lines = card.splitlines()
    assert lines[0].startswith("| failure class | failures before | failures after |")
    assert lines[2] == ("| `wrong_sum` | 10 | 8 | 20.0% (2/10) [5.7%, 51.0%] | 87.5% (7/8) [52.9%, 97.8%] | +87.5 pts "
                        "| 0.0312 |")
    assert lines[3] == "| `no_answer` | 2 | 2 | 0.0% (0/2) [0.0%, 65.8%] | 50.0% (1/2) [9.5%, 90.5%] | +0.0 pts | 1 |"
    assert "Holm-Bonferroni" in card
    shutil.rmtree(tmp_path / "run" / "eval_before")
    only_after = failure_class_card(load_run(tmp_path / "run"))
    assert only_after.splitlines()[2] == ("| `wrong_sum` | — | 8 | — | 87.5% (7/8) [52.9%, 97.8%] | +87.5 pts "
                                          "| 0.0312 |")


# --------------------------------------------------------------------------- r3rl compare


def _compare_run(root: Path, name: str, after: list[dict]) -> Path:
    write_eval(root / name / "eval_before", before_records(), tables=False, model="base")
    write_eval(root / name / "eval_after", after, tables=True, model=name)
    return root / name


def test_compare_gives_per_class_gains_per_run_and_first_attempts_vs_the_first(tmp_path: Path) -> None:
    a = _compare_run(tmp_path, "reflection", after_records())
    b = _compare_run(tmp_path, "first_attempt", before_records())  # unchanged by training
    data = compare_runs([a, b])
    classes = data["classes"]
    assert list(classes["by_class"]) == ["base", "reflection", "first_attempt"]
    gain = classes["by_class"]["reflection"]["classes"]["wrong_sum"]["gain"]
    assert (gain["second_only"], gain["first_only"]) == (7, 0)
    assert gain["p_value"] == pytest.approx(2 / 2**7) and gain["p_holm"] == pytest.approx(2 * 2 / 2**7)
    # Each run's first attempts against the first row (base): reflection as before vs after above;
    # first_attempt has the same first attempts as base: no change anywhere, p = 1.
    (vs_reflection, vs_first_attempt) = classes["first_attempt"]
    assert (vs_reflection["first"], vs_reflection["second"]) == ("base", "reflection")
    passed = vs_reflection["first_attempt"]["pass"]
    assert (passed["before"], passed["after"]) == (0, 2)
    assert passed["gain"]["p_value"] == pytest.approx(0.5)
    assert all(r["gain"]["difference"] == 0 and r["gain"]["p_value"] == 1.0
               for r in vs_first_attempt["first_attempt"].values())
    md = write_comparison(data, tmp_path / "cmp").read_text()
    assert ("| reflection | `wrong_sum` | 8 | 87.5% (7/8) [52.9%, 97.8%] | 0.0% (0/8) [0.0%, 32.4%] | +87.5 pts | "
            "[+40.1, +97.8] pts | 0.0156 | 0.0312 |") in md
    assert "| base | reflection | `pass` | 0 | 2 | +16.7 pts |" in md
    assert "| base | first_attempt | `wrong_sum` | 10 | 10 | +0.0 pts |" in md
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["classes"]["by_class"]["reflection"]["classes"]["wrong_sum"]["failures"] == 8


def test_compare_without_classes_says_so_in_one_sentence(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        for d, recs in (("eval_before", before_records()), ("eval_after", after_records())):
            write_eval(tmp_path / name / d, [{k: v for k, v in r.items() if not k.endswith("_class")} for r in recs],
                       tables=False)
        runs.append(tmp_path / name)
    data = compare_runs(runs)
    assert data["classes"]["first_attempt"] == [] and all(t is None for t in data["classes"]["by_class"].values())
    md = write_comparison(data, tmp_path / "cmp").read_text()
    assert ("No run's evaluation gives a failure class for its failed first attempts, so there are no per-class "
            "tables.") in md
    assert "Per failure class" not in md



def test_several_samples_per_example_use_the_clustered_test(tmp_path: Path) -> None:
    # Each trial twice (samples 0 and 1, same outcomes): wrong_sum's examples e0..e6 each gain +2 trials,
    # so the sign-flip test over examples gives p = 2 / 2^7 again, not the 2 / 2^14 of 14 independent pairs.
    run = tmp_path / "run"
    recs = [dict(r, sample=s) for r in after_records() for s in (0, 1)]
    write_eval(run / "eval_after", recs, tables=False)
    md, _ = _report(run)
    section = _section(md, "Failure classes")
    assert "exact McNemar test clustered by example (two-sided sign-flip test over examples)" in section
    row = next(line for line in section.splitlines() if line.startswith("| wrong_sum | after |"))
    assert row.startswith("| wrong_sum | after | 16 (80.0%) | 87.5% (14/16) [")
    assert row.endswith("| 0.0156 | 0.0312 |")
