"""Mining keeps failures with pass rates, and resumes after an interruption with nothing lost or duplicated."""

import json

import pytest

from r3rl.config import Config
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment.rollout import Rollout
from r3rl.mining.failure_set import load_failures, mine, passed_path
from r3rl.runtime.io import iter_jsonl
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
    calls = {"n": 0}

    dying = SeededEngine(tok, None)  # the same engine (what mined a set is part of its state), dying
    one = dying._one

    def die_in_chunk_1(prompt_ids, params, j):
        calls["n"] += 1
        if calls["n"] > 8 * 3:  # chunk 0 is final (its state written); die as chunk 1 starts
            raise KeyboardInterrupt
        return one(prompt_ids, params, j)

    dying._one = die_in_chunk_1
    with pytest.raises(KeyboardInterrupt):
        mine(Rollout(dying, ParityTask(), cfg.generation, cfg.rollout), cfg.failures, cfg.seed,
             show_progress=False, chunk_size=8)
    # as if the kill had come after half of chunk 1's records were written, before its state
    for src, dst in ((straight.failures.path, cfg.failures.path),
                     (passed_path(straight.failures.path), passed_path(cfg.failures.path))):
        with open(dst, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in iter_jsonl(src) if 8 <= int(r["example_id"]) < 12)
    engine = SeededEngine(tok, None)
    summary = mine(Rollout(engine, ParityTask(), cfg.generation, cfg.rollout), cfg.failures, cfg.seed,
                   show_progress=False, chunk_size=8)
    got = {r["example_id"]: r for p in (cfg.failures.path, passed_path(cfg.failures.path)) for r in iter_jsonl(p)}
    assert got == want
    assert sorted(map(int, got)) == list(range(40))  # every example once: the half chunk's lines were dropped
    assert summary["skipped_already_mined"] == 8 and summary["new_with_failure"] + summary["new_all_passed"] == 32
    assert len(engine.calls) == (40 - 8) * 3  # chunk 1 again in whole, never chunk 0


# ---------------------------------------------------------------- what mined a failure set


DEMO = ["model.name_or_path=demo", "task.name=addition", "generation.max_attempt_tokens=8",
        "failures.num_examples=6", "failures.attempts_per_example=2", "failures.chunk_size=4"]


def _cli_error(capsys, argv):
    from r3rl.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1
    return err[0]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A random tiny Qwen2: another model than the demo's."""
    from r3rl.demo.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("other") / "model", hidden_size=32, layers=1, heads=2, kv_heads=1)


def test_a_failure_set_is_reused_only_by_what_mined_it(tmp_path, capsys, other_model):
    from r3rl.cli import main

    path = tmp_path / "failures.jsonl"
    assert main(["mine", *DEMO, f"failures.path={path}"]) == 0
    mined = path.read_bytes()
    assert main(["mine", *DEMO, f"failures.path={path}"]) == 0 and path.read_bytes() == mined  # the same setup goes on

    how = (f"to mine anew, set failures.path to a new file or delete {path}; to use it as it is on purpose, "
           "set failures.reuse=any")
    msg = _cli_error(capsys, ["train", *DEMO, f"model.name_or_path={other_model}", f"failures.path={path}",
                              f"train.output_dir={tmp_path / 'run'}", "train.steps=1", "train.batch_size=2",
                              "train.micro_batch_size=2", "train.lora=false"])
    assert msg.startswith(f"r3rl train: error: {path} was mined by another setup (model 'demo' then, "
                          f"'{other_model}' now): ") and msg.endswith(how)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    msg = _cli_error(capsys, ["mine", *DEMO, "task.name=countdown", f"failures.path={path}"])
    assert "(task.name 'addition' then, 'countdown' now" in msg and msg.endswith(how)
    msg = _cli_error(capsys, ["mine", *DEMO, "failures.attempts_per_example=3", "seed=1", f"failures.path={path}"])
    assert "(failures.attempts_per_example 2 then, 3 now; seed 0 then, 1 now)" in msg
    assert path.read_bytes() == mined  # nothing was touched

    # on purpose: used as it is, nothing mined
    assert main(["mine", *DEMO, "task.name=countdown", "failures.reuse=any", f"failures.path={path}"]) == 0
    assert path.read_bytes() == mined and "failures.reuse=any: using" in capsys.readouterr().err
    # deleting the set (only failures.jsonl) mines anew
    path.unlink()
    assert main(["mine", *DEMO, f"model.name_or_path={other_model}", f"failures.path={path}"]) == 0
    assert path.exists() and json.loads(state_of(path))["fingerprint"]["model"]["name_or_path"] == str(other_model)


def state_of(path):
    from r3rl.runtime.chunks import state_path

    return state_path(path).read_text()


def test_a_failure_set_of_the_old_format_reads_but_is_not_resumed_by_accident(tok, tmp_path):
    cfg = cfg_for(tmp_path, n=16)
    roll = Rollout(ScriptedEngine(tok, lambda p, j: "odd"), ParityTask(), cfg.generation, cfg.rollout)
    mine(roll, cfg.failures, cfg.seed, show_progress=False, chunk_size=8)
    (tmp_path / "failures.jsonl.state.json").unlink()  # what an older r3rl left: records, no state
    assert len(load_failures(cfg.failures.path)) == 8
    from r3rl.mining.failure_set import FailureSetMismatch

    with pytest.raises(FailureSetMismatch, match=r"failures.jsonl does not say what mined it \(it was written by an "
                                                 r"r3rl older than failures.jsonl.state.json, or by hand\)"):
        mine(roll, cfg.failures, cfg.seed, show_progress=False, chunk_size=8)
    cfg.failures.reuse = "any"
    assert mine(roll, cfg.failures, cfg.seed, show_progress=False, chunk_size=8)["failure_set_size"] == 8


class ClassifyingParity(ParityTask):
    def verify(self, ex, completion):
        v = super().verify(ex, completion)
        return v if v.ok else Verdict(False, v.reason, "wrong_parity")


def test_failure_classes_go_into_the_set_and_back(tok, tmp_path):
    cfg = cfg_for(tmp_path, n=4, k=2)
    mine(Rollout(ScriptedEngine(tok, lambda p, j: "odd"), ClassifyingParity(), cfg.generation, cfg.rollout),
         cfg.failures, cfg.seed, show_progress=False)
    recs = list(iter_jsonl(cfg.failures.path))
    assert [r["classes"] for r in recs] == [["wrong_parity"]] * 2
    assert list(recs[0]) == ["example_id", "attempts", "pass_rate", "example", "failed_attempts", "reasons", "classes"]
    assert [f.attempt_class for f in load_failures(cfg.failures.path)] == ["wrong_parity"] * 2


def test_a_complete_failure_set_says_so_instead_of_a_zero_token_bar(tok, tmp_path, capsys):
    """`r3rl train` re-checks the failure set `r3rl mine` wrote: nothing is generated, and a progress bar at
    100% reading "0 tokens, 0 tok/s" looked like a stalled engine (the line issue 17 quoted from the demo)."""
    cfg = cfg_for(tmp_path, n=16)
    roll = Rollout(ScriptedEngine(tok, lambda p, j: "odd"), ParityTask(), cfg.generation, cfg.rollout)
    mine(roll, cfg.failures, cfg.seed, show_progress=True, chunk_size=8)
    capsys.readouterr()
    mine(roll, cfg.failures, cfg.seed, show_progress=True, chunk_size=8)
    err = capsys.readouterr().err
    assert "is complete (16 examples mined); nothing left to mine" in err
    assert "0 tok/s" not in err
