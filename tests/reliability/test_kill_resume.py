"""kill -9 at seeded points of real `r3rl mine`, `r3rl train` and `r3rl eval` runs, then resume.

Each kill lands at a chosen call of a code point (half-written JSONL line, half-written temporary
file, before or after a rename, a checkpoint file cut in half, a half-deleted checkpoint folder,
the start of a generation call) or after a random delay. After every kill we check what a resume
would trust (every complete row correct, no duplicates, the latest checkpoint whole), resume with
the next fault planned, and at the end compare with an uninterrupted run: the same failure set,
the same metrics and episodes rows, bit-identical final weights (CPU, deterministic).

Short run (CI): a few kills per command. R3RL_RELIABILITY=long: at least 10 kills per command, and
the figures go to runs/reliability/kills-<command>.json.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import LONG
from tests.reliability.harness import (EVAL, MINE, ROOT, TRAIN, check_latest_checkpoint, jsonl_rows, killed, ok,
                                       plan, r3rl, same_weights, weights, without_timing)

KILLS = 10 if LONG else 3


def _faults(seed: int, points: list[str], counts: dict[str, int], wall: float, n: int) -> list[str]:
    """Seeded faults: mostly code points, one in four a delay anywhere in the run's wall time."""
    rng = random.Random(seed)
    out = plan(seed, points, counts, n)
    return [f"delay:{rng.uniform(1.0, max(wall, 1.5)):.2f}" if rng.random() < 0.25 else f for f in out]


def _record(name: str, figures: dict[str, Any]) -> None:
    if LONG:
        out = ROOT / "runs" / "reliability"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"kills-{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


def _lost_and_duplicated(ref: list[Any], got: list[Any]) -> tuple[int, int]:
    key = [json.dumps(r, sort_keys=True) for r in ref]
    have = [json.dumps(r, sort_keys=True) for r in got]
    return len(set(key) - set(have)), len(have) - len(set(have))


def _chains(faults: list[str], target: int, run_one, check_after_kill, finish, new_dir) -> dict[str, Any]:
    """Apply faults in order to a run folder, resuming after each kill; a run that ends without its
    fault firing is checked against the reference and the next faults go to a fresh folder."""
    fired: dict[str, int] = {}
    kills = completed = 0
    run = new_dir()
    pending = list(faults)
    while pending and kills < target:
        fault = pending.pop(0)
        proc = run_one(run, fault)
        if killed(proc):
            kills += 1
            point = fault.split(":")[0]
            fired[point] = fired.get(point, 0) + 1
            check_after_kill(run, fault)
        else:
            ok(proc)
            finish(run)
            completed += 1
            run = new_dir()
    proc = run_one(run, "")
    ok(proc)
    finish(run)
    return {"kills": kills, "kills_by_point": fired, "runs_completed": completed + 1}


# ------------------------------------------------------------------------------------------- mine
def test_mine_survives_kills(tmp_path):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    counts_file = tmp_path / "counts.json"
    t0 = time.perf_counter()
    ok(r3rl(["mine", f"failures.path={ref_dir}/failures.jsonl", *MINE], tmp_path, counts=counts_file))
    wall = time.perf_counter() - t0
    counts = json.loads(counts_file.read_text())
    ref_fail = jsonl_rows(ref_dir / "failures.jsonl", allow_partial_tail=False)
    ref_pass = jsonl_rows(ref_dir / "failures.jsonl.passed", allow_partial_tail=False)
    assert ref_fail and ref_pass and len(ref_fail) + len(ref_pass) == 150
    by_id = {r["example_id"]: r for r in ref_fail + ref_pass}
    dirs = iter(range(1000))
    totals = {"lost": 0, "duplicated": 0, "wrong": 0}

    def new_dir() -> Path:
        d = tmp_path / f"run{next(dirs)}"
        d.mkdir()
        return d

    def run_one(run: Path, fault: str):
        return r3rl(["mine", f"failures.path={run}/failures.jsonl", *MINE], tmp_path, fault=fault)

    def check_after_kill(run: Path, fault: str) -> None:
        rows = jsonl_rows(run / "failures.jsonl") + jsonl_rows(run / "failures.jsonl.passed")
        ids = [r["example_id"] for r in rows]
        assert len(ids) == len(set(ids)), f"after {fault}: duplicated rows"
        wrong = [r["example_id"] for r in rows if by_id.get(r["example_id"]) != r]
        totals["wrong"] += len(wrong)
        assert not wrong, f"after {fault}: rows differ from the uninterrupted run: {wrong[:3]}"

    def finish(run: Path) -> None:
        got_fail = jsonl_rows(run / "failures.jsonl", allow_partial_tail=False)
        got_pass = jsonl_rows(run / "failures.jsonl.passed", allow_partial_tail=False)
        for ref, got in ((ref_fail, got_fail), (ref_pass, got_pass)):
            lost, dup = _lost_and_duplicated(ref, got)
            totals["lost"] += lost
            totals["duplicated"] += dup
        assert got_fail == ref_fail and got_pass == ref_pass

    faults = _faults(1, ["jsonl", "attempts", "replace"], counts, wall, KILLS * 3)
    figures = _chains(faults, KILLS, run_one, check_after_kill, finish, new_dir)
    _record("mine", {**figures, "rows_reference": len(ref_fail) + len(ref_pass), **totals})
    assert figures["kills"] >= KILLS


# ------------------------------------------------------------------------------------------ train
def _train_outputs(run: Path) -> dict[str, Any]:
    return {
        "failures": jsonl_rows(run / "failures.jsonl", allow_partial_tail=False),
        "metrics": without_timing(jsonl_rows(run / "metrics.jsonl", allow_partial_tail=False)),
        "episodes": jsonl_rows(run / "episodes.jsonl", allow_partial_tail=False),
        "weights": weights(run / "final"),
    }


def test_train_survives_kills(tmp_path):
    ref_dir = tmp_path / "ref"
    counts_file = tmp_path / "counts.json"
    t0 = time.perf_counter()
    ok(r3rl(["train", f"train.output_dir={ref_dir}", f"failures.path={ref_dir}/failures.jsonl", *TRAIN], tmp_path, counts=counts_file))
    wall = time.perf_counter() - t0
    counts = json.loads(counts_file.read_text())
    ref = _train_outputs(ref_dir)
    assert len(ref["metrics"]) == 6 and ref["episodes"] and ref["failures"]
    assert check_latest_checkpoint(ref_dir) == 6
    ref_metrics = {r["step"]: r for r in ref["metrics"]}
    dirs = iter(range(1000))
    totals = {"lost": 0, "duplicated": 0}

    def new_dir() -> Path:
        return tmp_path / f"run{next(dirs)}"

    def run_one(run: Path, fault: str):
        resume = ["--resume"]  # also right before the first checkpoint: it then starts from step 0
        return r3rl(["train", *resume, f"train.output_dir={run}", f"failures.path={run}/failures.jsonl", *TRAIN], tmp_path, fault=fault)

    def check_after_kill(run: Path, fault: str) -> None:
        check_latest_checkpoint(run)  # whole and loadable, whatever the kill hit
        metrics = without_timing(jsonl_rows(run / "metrics.jsonl"))
        steps = [r["step"] for r in metrics]
        assert steps == list(range(1, len(steps) + 1)), f"after {fault}: metrics steps {steps}"
        assert all(ref_metrics[r["step"]] == r for r in metrics), f"after {fault}: a metrics row differs"
        ids = [r["example_id"] for r in jsonl_rows(run / "failures.jsonl")]
        assert len(ids) == len(set(ids)), f"after {fault}: duplicated failure-set rows"

    def finish(run: Path) -> None:
        got = _train_outputs(run)
        for key in ("failures", "metrics", "episodes"):
            lost, dup = _lost_and_duplicated(ref[key], got[key])
            totals["lost"] += lost
            totals["duplicated"] += dup
            assert got[key] == ref[key], f"{key} differ from the uninterrupted run"
        assert same_weights(got["weights"], ref["weights"]), "final weights differ from the uninterrupted run"
        assert check_latest_checkpoint(run) == 6

    points = ["jsonl", "replace", "replaced", "fsync", "torch_save", "safetensors", "rmtree", "attempts", "reflect"]
    faults = _faults(2, points, counts, wall, KILLS * 3)
    figures = _chains(faults, KILLS, run_one, check_after_kill, finish, new_dir)
    _record("train", {**figures, "rows_reference": sum(len(ref[k]) for k in ("failures", "metrics", "episodes")),
                      **totals})
    assert figures["kills"] >= KILLS


# ------------------------------------------------------------------------------------------- eval
def _eval_resume_flag(tmp_path: Path) -> list[str]:
    proc = r3rl(["eval", "--help"], tmp_path)
    return ["--resume"] if "--resume" in proc.stdout else []


def test_eval_resumes_where_it_stopped(tmp_path):
    """A killed evaluation keeps its finished work: the resumed run samples only what is left, and its
    results and episodes equal an uninterrupted run's."""
    counts_file = tmp_path / "counts.json"
    ok(r3rl(["eval", "-o", str(tmp_path / "ref"), *EVAL], tmp_path, counts=counts_file))
    ref_counts = json.loads(counts_file.read_text())
    ref_results = json.loads((tmp_path / "ref" / "results.json").read_text())
    ref_eps = jsonl_rows(tmp_path / "ref" / "episodes.jsonl", allow_partial_tail=False)
    assert ref_counts["attempts"] >= 3 and ref_counts["attempts_examples"] == 140
    run = tmp_path / "run"
    # killed as the third chunk's first attempts start: two chunks (128 examples) are done
    assert killed(r3rl(["eval", "-o", str(run), *EVAL], tmp_path, fault="attempts:3"))
    ok(r3rl(["eval", *_eval_resume_flag(tmp_path), "-o", str(run), *EVAL], tmp_path, counts=counts_file))
    resumed = json.loads(counts_file.read_text())
    assert resumed["attempts_examples"] < ref_counts["attempts_examples"], "the resumed run redid finished work"
    results = json.loads((run / "results.json").read_text())
    assert {k: v for k, v in results.items() if k != "model"} == {k: v for k, v in ref_results.items() if k != "model"}
    assert jsonl_rows(run / "episodes.jsonl", allow_partial_tail=False) == ref_eps


@pytest.mark.skipif(not LONG, reason="the long run only (make reliability); the short suite kills eval once above")
def test_eval_survives_kills(tmp_path):
    """>= 10 seeded kills of `r3rl eval` (JSONL appends, renames, generation calls, random delays), each
    followed by a resume; every finished run ends with the uninterrupted run's results and episodes."""
    counts_file = tmp_path / "counts.json"
    t0 = time.perf_counter()
    ok(r3rl(["eval", "-o", str(tmp_path / "ref"), *EVAL], tmp_path, counts=counts_file))
    wall = time.perf_counter() - t0
    counts = json.loads(counts_file.read_text())
    ref_results = {k: v for k, v in json.loads((tmp_path / "ref" / "results.json").read_text()).items() if k != "model"}
    ref_eps = jsonl_rows(tmp_path / "ref" / "episodes.jsonl", allow_partial_tail=False)
    by_key = {(e["example_id"], e["sample"]): e for e in ref_eps}
    dirs = iter(range(1000))
    totals = {"lost": 0, "duplicated": 0, "wrong": 0}

    def new_dir() -> Path:
        return tmp_path / f"run{next(dirs)}"

    def run_one(run: Path, fault: str):
        return r3rl(["eval", "-o", str(run), *EVAL], tmp_path, fault=fault)

    def check_after_kill(run: Path, fault: str) -> None:
        rows = jsonl_rows(run / "episodes.jsonl")
        keys = [(r["example_id"], r["sample"]) for r in rows]
        assert len(keys) == len(set(keys)), f"after {fault}: duplicated episode rows"
        wrong = [k for k, r in zip(keys, rows) if by_key.get(k) != r]
        totals["wrong"] += len(wrong)
        assert not wrong, f"after {fault}: rows differ from the uninterrupted run: {wrong[:3]}"

    def finish(run: Path) -> None:
        got = jsonl_rows(run / "episodes.jsonl", allow_partial_tail=False)
        lost, dup = _lost_and_duplicated(ref_eps, got)
        totals["lost"] += lost
        totals["duplicated"] += dup
        results = {k: v for k, v in json.loads((run / "results.json").read_text()).items() if k != "model"}
        assert got == ref_eps and results == ref_results

    points = [p for p in ("jsonl", "attempts", "reflect", "replace") if counts.get(p)]
    faults = _faults(3, points, counts, wall, KILLS * 3)
    figures = _chains(faults, KILLS, run_one, check_after_kill, finish, new_dir)
    _record("eval", {**figures, "rows_reference": len(ref_eps), **totals})
    assert figures["kills"] >= KILLS
