"""Ranks that disagree stop together: the training loop's agreement points and its lost-rank message.

A collective is only safe when every rank issues it. A rank that raises (its verifier past
rollout.max_verifier_errors, a prompt over generation.max_prompt_tokens, a bug in a loss) would
otherwise leave the others waiting in the next gradient all-reduce until the launcher kills them,
each printing a traceback from the broken connection. So the trainer runs each piece of one rank's
own work (its rollouts, its loss rows, each micro-batch's loss) through `Agreement.run`: the work's
exception is caught, and every rank then exchanges a status at that fixed point (one all-reduce of
an error flag, plus one gather of the messages when a flag is set) before any gradient collective.
When any rank failed, every rank raises the same `RankFailed` sentence there; the CLI prints it once,
from rank 0, with what was saved and the resume command.

A rank that dies (kill -9, a lost node) never reaches the agreement point. The others then fail in
their next collective: at once over gloo when the dead process's connections close, else when
torch.distributed's own timeout, set at `init_process_group` from `train.collective_timeout_s`,
expires. `lost_ranks()` turns that collective error into `RankLost`, one sentence saying a rank
stopped responding and how to resume. (No watchdog thread of r3rl's: the process group's timeout.)
"""

from __future__ import annotations

import contextlib
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from r3rl.errors import R3RLError

T = TypeVar("T")


class RankFailed(R3RLError):
    """One rank's work raised; every rank raises this same sentence at the agreement point."""

    def __init__(self, message: str, rank: int, world: int):
        super().__init__(message)
        self.rank, self.world = rank, world


class RankLost(R3RLError):
    """A collective failed: another rank stopped responding (died, or hung past the timeout)."""


def process_group_timeout(seconds: float) -> timedelta:
    """`train.collective_timeout_s` as the `timeout` of torch.distributed.init_process_group."""
    return timedelta(seconds=seconds)


def _cause(error: BaseException) -> str:
    """The failing rank's own cause in a few words: r3rl's errors are sentences already."""
    if isinstance(error, R3RLError):
        return str(error).rstrip(".")
    return f"{type(error).__name__}: {error}".rstrip(".")


class Agreement:
    """The agreement points of one training run (every rank holds one; all call `run` alike)."""

    def __init__(self, rank: int, world: int, device: Any, out: Path | None = None):
        self.rank, self.world, self.device, self.out = rank, world, device, out
        self.step = 0  # the optimizer step being worked on (1-based), named in the message

    def run(self, stage: str, fn: Callable[[], T], step: int | None = None) -> T:
        """fn() on this rank, then the agreement point: its result when every rank succeeded, else
        RankFailed on every rank. One process: fn's own exception, unchanged."""
        if step is not None:
            self.step = step
        if self.world == 1:
            return fn()
        error: Exception | None = None
        result: Any = None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - every rank's failure is reported alike; Ctrl-C passes through
            error = e
        self.check(stage, error)
        return result

    def check(self, stage: str, error: Exception | None) -> None:
        """The exchange: an all-reduce (max) of a 0/1 flag; on a set flag, a gather of the messages."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if error is not None else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not int(flag.item()):
            return
        mine = None if error is None else (_cause(error), self._save_traceback(error))
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, mine)
        failed = [r for r, m in enumerate(every) if m is not None]
        first = failed[0]
        cause, trace = every[first]
        others = f" (ranks {', '.join(map(str, failed))} failed)" if len(failed) > 1 else ""
        where = f"; its traceback is in {trace}" if trace else ""
        raise RankFailed(f"rank {first} of {self.world} failed at step {self.step} ({stage}){others}: {cause}{where}",
                         first, self.world)

    def _save_traceback(self, error: Exception) -> str | None:
        """An unexpected exception (a bug, not a user error) keeps its traceback, in a file rather than on
        the console; r3rl's own errors are sentences and need none."""
        if isinstance(error, R3RLError) or self.out is None:
            return None
        path = self.out / f"error-rank{self.rank}.txt"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        except OSError:
            return None
        return str(path)


def is_collective_failure(error: BaseException) -> bool:
    """torch.distributed's error for a peer that closed its connection or did not answer in time."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer", "Timed out waiting"))


@contextlib.contextmanager
def lost_ranks(timeout_s: float) -> Iterator[None]:
    """Turn a failed collective of a many-process run into RankLost, one sentence (no traceback)."""
    try:
        yield
    except Exception as e:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and is_collective_failure(e)):
            raise
        rank, world = dist.get_rank(), dist.get_world_size()
        raise RankLost(
            f"rank {rank} of {world}: another rank stopped responding (it died, or did not answer within "
            f"train.collective_timeout_s={timeout_s:g} s; {_first_words(e)})"
        ) from None


def _first_words(error: BaseException) -> str:
    """torch.distributed's own words, without the source location: "Connection closed by peer [10.0.0.2]:4321"."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0].rstrip(".")[:160]
