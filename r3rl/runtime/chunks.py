"""The chunk runner: the one sharded, resumable loop behind mining and evaluation.

The work is a list of fixed chunks (consecutive ranges of the example list, see
r3rl/runtime/distributed.py). Of the chunks still to do, the k-th goes to rank k % world; the caller
seeds each chunk from the chunk itself, so 1 and N processes, and a resumed run, give the
same records. After each round of `world` chunks the records are gathered in chunk order and
the main process appends them to the output JSONL files, then rewrites the state file that
sits next to the first output (`<output>.state.json`, written atomically):

    {"format": 1, "fingerprint": {...the settings that made the records...},
     "chunks_done": k, "lines": {file name: complete lines that belong to chunks 0..k-1},
     "totals": {name: int, summed over those chunks}, "complete": bool}

Rounds run in order, so the finished chunks are always a prefix of the list. On resume each
output is cut back to the lines the state vouches for: the lines of a chunk written only in
part (a kill between its records and the state) are dropped and that chunk is done again,
whole, with its own seed. Whether a state may be resumed at all (same fingerprint, finished
or not) is the caller's decision: a finished failure set is reused, a finished evaluation
run again is started over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from r3rl.errors import DamagedFileError
from r3rl.runtime.distributed import Processes
from r3rl.runtime.io import JsonlWriter, atomic_write_text, iter_jsonl, write_json

STATE_FORMAT = 1


class ChunkStateError(DamagedFileError):
    """Outputs and their state file disagree (a file cut or edited after it was written); names both."""


@dataclass
class ChunkOutput:
    """What one chunk produced: records per output name, in order, and counts summed into the state."""

    records: dict[str, list[dict[str, Any]]]
    totals: dict[str, int] = field(default_factory=dict)


def state_path(output: str | Path) -> Path:
    """The state file of a chunked job whose first output is `output`."""
    return Path(str(output) + ".state.json")


class ChunkLog:
    """The output JSONL files of one chunked job and the state saying how much of them is final.
    Only the main process makes one."""

    def __init__(self, outputs: dict[str, Path], fingerprint: dict[str, Any]):
        self.outputs = {name: Path(p) for name, p in outputs.items()}
        self.main = next(iter(self.outputs.values()))
        self.state_path = state_path(self.main)
        self.fingerprint = fingerprint
        self.state: dict[str, Any] = {}

    # ------------------------------------------------------------------ reading what is there
    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or the main output is gone: start over)."""
        if not self.state_path.exists() or not self.main.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ChunkStateError(f"{self.state_path}: not a readable state file ({e}); delete it and "
                                  f"{self.main} to start over") from None
        keys = ("fingerprint", "chunks_done", "lines")
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or any(k not in state for k in keys):
            raise ChunkStateError(f"{self.state_path}: not a state file of this r3rl (format {STATE_FORMAT}); "
                                  f"delete it and {self.main} to start over")
        return state

    def has_records(self) -> bool:
        """Any output holds data (a job written before states existed, or by hand)."""
        return any(p.exists() and p.stat().st_size > 0 for p in self.outputs.values())

    def records(self, name: str) -> list[dict[str, Any]]:
        return list(iter_jsonl(self.outputs[name]))

    # ------------------------------------------------------------------ starting
    def start(self) -> int:
        """Empty outputs and a state with no chunk done; returns 0 (chunks done)."""
        for path in self.outputs.values():
            atomic_write_text(path, "")
        self.state = {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "chunks_done": 0,
                      "lines": {p.name: 0 for p in self.outputs.values()}, "totals": {}, "complete": False}
        write_json(self.state_path, self.state)
        return 0

    def resume(self, state: dict[str, Any]) -> int:
        """Cut each output back to the lines `state` vouches for; returns the chunks done."""
        for path in self.outputs.values():
            _keep_lines(path, int(state["lines"].get(path.name, 0)), self.state_path)
        self.state = dict(state)
        return int(state["chunks_done"])

    def adopt(self, state: dict[str, Any]) -> None:
        """Keep a state as it is, without cutting anything (the outputs are used as they stand)."""
        self.state = dict(state)

    # ------------------------------------------------------------------ writing
    def append(self, parts: list[ChunkOutput], chunks_done: int) -> None:
        """One round's chunk outputs, in chunk order: the records first, then the state that vouches for them."""
        lines = self.state["lines"]
        for name, path in self.outputs.items():
            records = [r for part in parts for r in part.records.get(name, [])]
            if records:
                with JsonlWriter(path) as w:
                    w.write_many(records)
            lines[path.name] = lines.get(path.name, 0) + len(records)
        totals = self.state.setdefault("totals", {})
        for part in parts:
            for key, n in part.totals.items():
                totals[key] = totals.get(key, 0) + n
        self.state["chunks_done"] = chunks_done
        write_json(self.state_path, self.state)

    def finish(self) -> None:
        self.state["complete"] = True
        write_json(self.state_path, self.state)


def _keep_lines(path: Path, n: int, state: Path) -> None:
    """Cut `path` after its n-th line; fewer than n complete lines means it was damaged after writing."""
    data = path.read_bytes() if path.exists() else b""
    end = 0
    for _ in range(n):
        nl = data.find(b"\n", end)
        if nl < 0:
            have = data.count(b"\n")
            raise ChunkStateError(f"{path} holds {have} complete line(s) but {state} says {n} were written: it was "
                                  f"cut or edited afterwards; delete {path} to start over")
        end = nl + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)


def run_chunks(
    procs: Processes,
    chunks: list[range],
    work: Callable[[range], ChunkOutput],
    *,
    done: int = 0,
    log: ChunkLog | None = None,
    on_round: Callable[[list[range], list[ChunkOutput]], None] | None = None,
) -> int:
    """Run chunks[done:] over all processes; returns the chunks done (len(chunks)).

    Every rank calls it with the same arguments (`log` only on the main process). Chunk k of the
    remaining ones runs on rank k % world; each round's outputs are gathered in chunk order, appended
    by `log`, and handed to `on_round` (every rank sees every round's outputs).
    """
    for batch, mine in procs.rounds(list(range(done, len(chunks)))):
        out = work(chunks[mine]) if mine is not None else None
        parts = [p for p in procs.gather(out) if p is not None]  # rank order = chunk order; idle ranks last
        done += len(batch)
        if log is not None:
            log.append(parts, done)
        if on_round is not None:
            on_round([chunks[k] for k in batch], parts)
    return done
