"""`r3rl compare`: runs on the same trials side by side, paired tests by hand, refusal when trials differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r3rl.reporting.run import ReportError
from r3rl.reporting.side_by_side import compare_runs, write_comparison


def _eval(folder: Path, outcomes: list[tuple[bool, bool]], model: str, task: str = "addition") -> None:
    """An eval folder whose trial k (example e{k}, sample 0) has (attempt_ok, retry_ok) = outcomes[k]."""
    folder.mkdir(parents=True)
    eps = [{"example_id": f"e{k}", "sample": 0, "attempt_ok": a, "retry_ok": r, "no_reflection_retry_ok": False}
           for k, (a, r) in enumerate(outcomes)]
    (folder / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    n = len(eps)
    acc1 = sum(a for a, _ in outcomes) / n
    acc2 = sum(a or r for a, r in outcomes) / n
    (folder / "results.json").write_text(json.dumps({
        "task": task, "model": model, "n": n, "samples": 1, "trials": n,
        "acc@1": acc1, "acc@1_ci": [0.0, 1.0], "acc@2": acc2, "acc@2_ci": [0.0, 1.0]}))


def _run(root: Path, name: str, before: list, after: list, task: str = "addition") -> Path:
    run = root / name
    _eval(run / "eval_before", before, "base", task)
    _eval(run / "eval_after", after, name, task)
    return run


BASE = [(False, False)] * 10 + [(True, False)] * 2


def test_two_runs_side_by_side_with_paired_tests(tmp_path):
    # run a fixes attempts on e0..e5 (acc@1 8/12); run b on e0..e1 only and loses e10 (acc@1 3/12)
    a = _run(tmp_path, "reflection", BASE, [(True, False)] * 6 + [(False, True)] * 4 + [(True, False)] * 2)
    b = _run(tmp_path, "first_attempt", BASE, [(True, False)] * 2 + [(False, False)] * 8 + [(False, False), (True, False)])
    data = compare_runs([a, b])
    assert [r["run"] for r in data["runs"]] == ["base", "reflection", "first_attempt"]  # shared eval_before first
    acc1 = {(c["second"], c["metric"]): c for c in data["comparisons"]}
    # base -> reflection, acc@1: 6 trials pass only after (c = 6), none only before (b = 0): p = 2 / 2^6
    r1 = acc1[("reflection", "acc@1")]
    assert (r1["first_only"], r1["second_only"]) == (0, 6)
    assert r1["p_value"] == pytest.approx(2 / 2**6)
    # base -> first_attempt, acc@1: b = 1 (e10), c = 2 (e0, e1): p = 2 * P(X <= 1 | n=3) = 2 * 4/8 = 1
    f1 = acc1[("first_attempt", "acc@1")]
    assert (f1["first_only"], f1["second_only"]) == (1, 2) and f1["p_value"] == 1.0
    # Holm over the 4 comparisons: the smallest p is multiplied by 4
    ps = [c["p_value"] for c in data["comparisons"]]
    assert min(c["p_holm"] for c in data["comparisons"]) == pytest.approx(min(1.0, 4 * min(ps)))
    md = write_comparison(data, tmp_path / "cmp")
    text = md.read_text()
    assert "| reflection |" in text and "compare.png" in text
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["trials"] == 12


def test_no_base_row_when_the_runs_started_from_different_models(tmp_path):
    a = _run(tmp_path, "a", BASE, BASE)
    b = _run(tmp_path, "b", [(True, False)] * 12, BASE)
    assert [r["run"] for r in compare_runs([a, b])["runs"]] == ["a", "b"]


def test_refuses_runs_evaluated_on_different_trials(tmp_path):
    a = _run(tmp_path, "a", BASE, BASE)
    b = _run(tmp_path, "b", BASE[:-1], BASE[:-1])
    with pytest.raises(ReportError, match=r"different trials \(1 only in a, 0 only in b\).*same eval.split"):
        compare_runs([a, b])


def test_refuses_runs_of_different_tasks(tmp_path):
    a = _run(tmp_path, "a", BASE, BASE)
    b = _run(tmp_path, "b", BASE, BASE, task="countdown")
    with pytest.raises(ReportError, match="different tasks"):
        compare_runs([a, b])


def test_refuses_a_folder_without_an_evaluation(tmp_path):
    a = _run(tmp_path, "a", BASE, BASE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no evaluation to compare"):
        compare_runs([a, tmp_path / "empty"])


def test_cli_compare_writes_the_files_and_refuses_in_one_sentence(tmp_path, capsys):
    from r3rl.cli import main

    a = _run(tmp_path, "a", BASE, BASE)
    b = _run(tmp_path, "b", BASE, [(True, False)] * 12)
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "compare.md").is_file()
    c = _run(tmp_path, "c", BASE[:5], BASE[:5])
    assert main(["compare", str(a), str(c), "--output", str(tmp_path / "out2")]) != 0
    err = capsys.readouterr().err
    assert "different trials" in err and "Traceback" not in err


def test_cli_compare_warns_when_a_runs_numbers_describe_other_weights(tmp_path, capsys):
    """eval_after/results.json measured other weights than the run's final/ holds now: one warning line."""
    from r3rl.cli import main
    from r3rl.demo.tiny import save_tiny_model
    from r3rl.engine.provenance import folder_weights

    a = _run(tmp_path, "a", BASE, BASE)
    b = _run(tmp_path, "b", BASE, [(True, False)] * 12)
    save_tiny_model(b / "final", seed=0, hidden_size=32, layers=1, heads=2, kv_heads=1)
    res = json.loads((b / "eval_after" / "results.json").read_text())
    (b / "eval_after" / "results.json").write_text(json.dumps({**res, "weights": "files:" + "0" * 32}))
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "are stale" in line and str(b / "final") in line]
    (b / "eval_after" / "results.json").write_text(json.dumps({**res, "weights": folder_weights(b / "final")}))
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "out")]) == 0
    assert "are stale" not in capsys.readouterr().err
