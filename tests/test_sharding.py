"""Mining and evaluation shard their chunks over processes: 2 processes write what 1 process writes.

The fast tests run the sharding logic in one process with a fake two-rank `Processes` whose
collectives are simulated (rank 1's share computed by a second call); the slow test launches
`r3rl mine` and `r3rl eval` under `accelerate launch` with 2 CPU processes over gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r3rl.runtime.distributed import Processes, chunk_ranges

from tests.trainer_fixtures import cli_overrides, free_port, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_chunks_and_rounds():
    assert [list(c) for c in chunk_ranges(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert chunk_ranges(0, 3) == []
    units = list(range(5))
    # 3 rounds for both ranks (rank 1 idles in the last), each round's units in order
    assert list(Processes(0, 2).rounds(units)) == [([0, 1], 0), ([2, 3], 2), ([4], 4)]
    assert list(Processes(1, 2).rounds(units)) == [([0, 1], 1), ([2, 3], 3), ([4], None)]
    assert list(Processes(0, 1).rounds(units[:2])) == [([0], 0), ([1], 1)]
    alone = Processes()
    assert alone.is_main and alone.gather("x") == ["x"] and alone.broadcast({"a": 1}) == {"a": 1}


def _run(args: list[str], procs: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "r3rl", *args]
    if procs > 1:
        # accelerate's torchrun path with ACCELERATE_USE_CPU=1 gives N CPU ranks over gloo
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "r3rl", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_mine_and_evaluate_like_one(model_dir, tmp_path):
    """`r3rl mine` and `r3rl eval` on 2 gloo processes write the same files, line for line, as 1 process:
    same failure set (ids, failed attempts, pass rates from the same seeds) and the same results.json."""
    outs = {}
    for procs in (1, 2):
        cfg = tiny_config(model_dir, tmp_path / f"p{procs}")
        cfg.failures.num_examples, cfg.failures.chunk_size = 14, 4  # 4 chunks, the last short: rank 1 idles
        cfg.eval.num_examples, cfg.eval.samples_per_example, cfg.eval.chunk_size = 10, 2, 3
        cfg.eval.output_dir = str(tmp_path / f"p{procs}" / "eval")
        cfg.eval.temperature = 1.0
        args = cli_overrides(cfg)
        for command in ("mine", "eval"):
            if procs == 1:  # in-process: the same command, without a second interpreter start
                from r3rl.cli import main

                assert main([command, *args]) == 0
                continue
            res = _run([command, *args], procs)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        outs[procs] = tmp_path / f"p{procs}"
    one, two = outs[1], outs[2]
    f1, f2 = _lines(one / "failures.jsonl"), _lines(two / "failures.jsonl")
    assert f1 == f2 and len(f1) > 0
    p1, p2 = _lines(Path(str(one / "failures.jsonl") + ".passed")), _lines(Path(str(two / "failures.jsonl") + ".passed"))
    assert p1 == p2 and len(f1) + len(p1) == 14
    # the attempts really vary (a sampled model, not one fixed answer), so equal files mean equal seeds
    assert len({a for r in f1 for a in r["failed_attempts"]}) > 1
    r1, r2 = (json.loads((d / "eval" / "results.json").read_text()) for d in (one, two))
    assert r1 == r2 and r1["trials"] == 20
    assert _lines(one / "eval" / "episodes.jsonl") == _lines(two / "eval" / "episodes.jsonl")


@pytest.mark.slow
def test_two_process_training_mines_on_every_rank(model_dir, tmp_path):
    """`r3rl train` on 2 processes with no failure set mines it with both ranks (the same file as
    `r3rl mine` on 1 process) and runs its periodic evaluation on both ranks."""
    cfg = tiny_config(model_dir, tmp_path / "one", steps=1, save_every=0, eval_every=1, eval_examples=5)
    cfg.failures.num_examples, cfg.failures.chunk_size, cfg.eval.chunk_size = 14, 4, 2
    from r3rl.cli import main

    assert main(["mine", *cli_overrides(cfg)]) == 0
    cfg.train.output_dir = str(tmp_path / "two")
    cfg.failures.path = str(tmp_path / "two" / "failures.jsonl")
    res = _run(["train", *cli_overrides(cfg)], 2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert _lines(tmp_path / "two" / "failures.jsonl") == _lines(tmp_path / "one" / "failures.jsonl")
    row = _lines(tmp_path / "two" / "metrics.jsonl")[0]
    assert 0.0 <= row["eval/acc@1"] <= row["eval/acc@2"] <= 1.0
