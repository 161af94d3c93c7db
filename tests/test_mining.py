"""Mining keeps failures with pass rates, and resumes after an interruption with nothing lost or duplicated."""

import json

import pytest

from r3rl.config import Config
from r3rl.engine.scripted import ScriptedEngine
from r3rl.io import iter_jsonl
from r3rl.mining import load_failures, mine, passed_path
from r3rl.rollout import Rollout
from r3rl.tasks.base import Task
from r3rl.types import Verdict


class ParityTask(Task):
    """Examples 0..n-1; the scripted model answers 'odd' always, so even numbers fail."""

    name = "parity"

    def load_examples(self, split="train", n=None, seed=0):
        return [{"id": str(i), "x": i} for i in range(n or 20)]

    def prompt(self, ex):
        return f"Is {ex['x']} odd?"

    def verify(self, ex, completion):
        ok = (completion.strip() == "odd") == (ex["x"] % 2 == 1)
        return Verdict(ok, "" if ok else "wrong parity")


def cfg_for(tmp_path, n=20, k=3):
    cfg = Config()
    cfg.failures.num_examples, cfg.failures.attempts_per_example = n, k
    cfg.failures.path = str(tmp_path / "failures.jsonl")
    return cfg


def test_mine_records_failures_and_pass_rates(tok, tmp_path):
    cfg = cfg_for(tmp_path)
    summary = mine(Rollout(ScriptedEngine(tok, lambda p, j: "odd"), ParityTask(), cfg.generation, cfg.rollout), cfg.failures, cfg.seed, show_progress=False, chunk_size=8)
    recs = list(iter_jsonl(cfg.failures.path))
    assert sorted(int(r["example_id"]) for r in recs) == list(range(0, 20, 2))
    assert all(r["pass_rate"] == 0.0 and r["failed_attempts"] == ["odd"] and r["attempts"] == 3 for r in recs)
    assert summary["failure_set_size"] == 10 and summary["new_all_passed"] == 10
    assert summary["attempt_pass_rate"] == 0.5
    failures = load_failures(cfg.failures.path)
    assert len(failures) == 10 and failures[0].attempt_reason == "wrong parity"


def test_mine_resumes_without_duplicates(tok, tmp_path):
    cfg = cfg_for(tmp_path, n=40)
    calls = {"n": 0}

    def dying(prompt, j):
        calls["n"] += 1
        if calls["n"] > 3 * 16 + 5:  # die in the middle of the third chunk of 8
            raise KeyboardInterrupt
        return "odd"

    with pytest.raises(KeyboardInterrupt):
        mine(Rollout(ScriptedEngine(tok, dying), ParityTask(), cfg.generation, cfg.rollout), cfg.failures, cfg.seed, show_progress=False, chunk_size=8)
    # simulate a kill in the middle of writing a line
    with open(cfg.failures.path, "a") as f:
        f.write('{"example_id": "9')
    partial = {r["example_id"] for r in iter_jsonl(cfg.failures.path, tolerate_truncated_tail=True)}
    assert 0 < len(partial) < 20
    engine = ScriptedEngine(tok, lambda p, j: "odd")
    summary = mine(Rollout(engine, ParityTask(), cfg.generation, cfg.rollout), cfg.failures, cfg.seed, show_progress=False, chunk_size=8)
    ids = [r["example_id"] for r in iter_jsonl(cfg.failures.path)]
    passed = [r["example_id"] for r in iter_jsonl(passed_path(cfg.failures.path))]
    assert sorted(map(int, ids)) == list(range(0, 40, 2))  # every failure once
    assert sorted(map(int, passed)) == list(range(1, 40, 2))
    assert summary["skipped_already_mined"] == 16  # two whole chunks survived the interruption
    assert len(engine.calls) == (40 - 16) * 3  # nothing already mined was sampled again


def test_load_failures_errors_name_file_and_record(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"example_id": "1", "example": {}, "failed_attempts": ["x"]}) + "\n" + json.dumps({"example_id": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, record 2: missing field\(s\) example, failed_attempts"):
        load_failures(p)
    p.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl, line 1: invalid JSON"):
        load_failures(p)


class SeededEngine(ScriptedEngine):
    """Answers depend on the call's seed and the sample index, as a sampling model's would."""

    def _one(self, prompt_ids, params, j):
        self.script = lambda prompt, jj: "odd" if (params.seed + jj) % 3 else f"even {params.seed % 97}"
        return super()._one(prompt_ids, params, j)


def test_half_written_chunk_is_sampled_again_whole_with_its_own_seed(tok, tmp_path):
    """A kill while a chunk's records were being written: the resumed run samples that chunk again
    with the same seed and writes only the missing records, so every record equals an unbroken run's."""
    straight = cfg_for(tmp_path / "a", n=40)
    mine(Rollout(SeededEngine(tok, None), ParityTask(), straight.generation, straight.rollout), straight.failures,
         straight.seed, show_progress=False, chunk_size=8)
    want = {r["example_id"]: r for p in (straight.failures.path, passed_path(straight.failures.path)) for r in iter_jsonl(p)}
    assert len(want) == 40 and len({a for r in want.values() for a in r.get("failed_attempts", [])}) > 1

    cfg = cfg_for(tmp_path / "b", n=40)
    (tmp_path / "b").mkdir()
    for src, dst in ((straight.failures.path, cfg.failures.path),
                     (passed_path(straight.failures.path), passed_path(cfg.failures.path))):
        kept = [r for r in iter_jsonl(src) if int(r["example_id"]) < 12]  # chunk 0 and half of chunk 1
        with open(dst, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
    engine = SeededEngine(tok, None)
    summary = mine(Rollout(engine, ParityTask(), cfg.generation, cfg.rollout), cfg.failures, cfg.seed,
                   show_progress=False, chunk_size=8)
    got = {r["example_id"]: r for p in (cfg.failures.path, passed_path(cfg.failures.path)) for r in iter_jsonl(p)}
    assert got == want
    assert summary["skipped_already_mined"] == 12 and summary["new_with_failure"] + summary["new_all_passed"] == 28
    assert len(engine.calls) == (40 - 8) * 3  # chunk 1 again in whole, never chunk 0
