"""The chunk runner: records first, then the state that vouches for them; a resume cuts what a kill left."""

from __future__ import annotations

import json

import pytest

from r3rl.runtime.chunks import ChunkLog, ChunkOutput, ChunkStateError, run_chunks, state_path
from r3rl.runtime.distributed import Processes, chunk_ranges


def _work(c: range) -> ChunkOutput:
    return ChunkOutput({"even": [{"i": i} for i in c if i % 2 == 0], "odd": [{"i": i} for i in c if i % 2]}, {"n": len(c)})


def _log(tmp_path) -> ChunkLog:
    return ChunkLog({"even": tmp_path / "even.jsonl", "odd": tmp_path / "odd.jsonl"}, {"settings": 1})


def test_a_killed_run_resumes_after_its_last_final_chunk(tmp_path):
    chunks = chunk_ranges(10, 3)  # 4 chunks, the last of one
    log = _log(tmp_path)
    log.start()
    seen = []

    def dying(c):
        if c.start == 6:
            with open(tmp_path / "even.jsonl", "a") as f:  # as if half of chunk 2 had been written
                f.write('{"i": 6}\n{"i": ')
            raise KeyboardInterrupt
        return _work(c)

    with pytest.raises(KeyboardInterrupt):
        run_chunks(Processes(), chunks, dying, log=log, on_round=lambda b, p: seen.append([list(c) for c in b]))
    assert seen == [[[0, 1, 2]], [[3, 4, 5]]]
    state = json.loads(state_path(tmp_path / "even.jsonl").read_text())
    assert (state["chunks_done"], state["lines"], state["totals"]) == (2, {"even.jsonl": 3, "odd.jsonl": 3}, {"n": 6})

    again = _log(tmp_path)
    done = again.resume(again.load())
    assert done == 2
    assert run_chunks(Processes(), chunks, _work, done=done, log=again) == 4
    again.finish()
    rows = [json.loads(x)["i"] for x in (tmp_path / "even.jsonl").read_text().splitlines()]
    assert rows == [0, 2, 4, 6, 8]  # the half-written chunk once, whole
    assert json.loads(state_path(tmp_path / "even.jsonl").read_text())["complete"] is True


def test_outputs_shorter_than_their_state_stop_with_both_names(tmp_path):
    log = _log(tmp_path)
    log.start()
    run_chunks(Processes(), chunk_ranges(4, 2), _work, log=log)
    (tmp_path / "odd.jsonl").write_text('{"i": 1}\n')  # 2 lines were vouched for
    again = _log(tmp_path)
    with pytest.raises(ChunkStateError, match=r"odd.jsonl holds 1 complete line\(s\) but .*even.jsonl.state.json says 2"):
        again.resume(again.load())
    state_path(tmp_path / "even.jsonl").write_text("{")
    with pytest.raises(ChunkStateError, match="not a readable state file"):
        again.load()
