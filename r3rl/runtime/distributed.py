"""Which process this is and how processes share generation work: rank, world size, gather, broadcast.

Mining and evaluation split their examples into fixed chunks, each seeded by the chunk
itself; chunk k of the work list goes to rank k % world, the results are gathered, and
the main process writes the files (the loop itself: r3rl/runtime/chunks.py). So 1 and N processes (and a resumed run) produce the
same records. This is a thin layer over torch.distributed, which `accelerate launch`
sets up (through an Accelerator in the trainer, `launched_state()` in the CLI); a single
process needs no process group and every collective below is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank (pickled: keep it to plain records)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """The main process's `obj` on every rank (what it read from disk, a summary it computed)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def rounds(self, units: list[T]) -> Iterator[tuple[list[T], T | None]]:
        """Split `units` into rounds of `world`: yields (the round's units in order, this rank's unit or None).

        Every rank iterates the same number of rounds, so a collective inside the loop never
        waits on a rank that ran out of work.
        """
        for start in range(0, len(units), self.world):
            batch = units[start : start + self.world]
            yield batch, batch[self.rank] if self.rank < len(batch) else None


def chunk_ranges(n: int, chunk_size: int) -> list[range]:
    """The fixed work units: consecutive chunks of the example list (the same on every rank and every run)."""
    return [range(c, min(c + chunk_size, n)) for c in range(0, n, chunk_size)]


def processes(accelerator: Any = None) -> Processes:
    """This process's place: from an Accelerator when given, else from torch.distributed, else alone."""
    if accelerator is not None:
        return Processes(accelerator.process_index, accelerator.num_processes)
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always ships it
        return Processes()
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size())
    return Processes()


def launched_state(timeout_s: float | None = None):
    """Under `accelerate launch` / torchrun (WORLD_SIZE > 1): set up the process group (accelerate's
    PartialState) and return it; its `.device` is this rank's device. A plain run returns None.
    `timeout_s`: how long a collective waits for a rank that stopped responding (torch.distributed's
    process-group timeout; train.collective_timeout_s), else torch's default."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    extra = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **extra)


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched); usable before any setup."""
    return int(os.environ.get("RANK", "0"))
