"""Where each micro-batch's failed first attempts come from: a mined failure set, or drawn online.

A failure source answers one question, `for_micro(step, micro)`: the failures of micro-batch
`micro` of optimizer step `step` (micro-batches numbered over all processes). The answer is a
function of (seed, step, micro) alone, so a resumed run and a run on another number of
processes train on the same failures.

* `MinedFailures`: the failure set (`r3rl mine`, resumed or finished here) read as an endless
  stream that reshuffles each epoch; micro-batch k of step s takes the next `micro_batch_size`
  items of it.
* `OnlineFailures`: the examples are streamed the same way, the current policy makes
  `failures.attempts_per_example` first attempts at each, and the first failed one (by
  `r3rl.environment.rollout.failed_attempts`, the one rule for "first attempts -> failures") is kept;
  an example whose attempts all pass gives nothing this time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Protocol, Sequence

import torch

from r3rl.config import Config
from r3rl.environment.rollout import Failure, Rollout, derive_seed, failed_attempts
from r3rl.mining.failure_set import load_failures, mine


class FailureSource(Protocol):
    def for_micro(self, step: int, micro: int) -> list[Failure]:
        """The failures of micro-batch `micro` (numbered over all processes) of optimizer step `step`."""
        ...


def stream(items: Sequence[Any], start: int, count: int, seed: int, tag: str) -> list[Any]:
    """items[start : start + count] of an endless stream that reshuffles each epoch, seeded by (seed, tag, epoch)."""
    out = []
    for g in range(start, start + count):
        epoch, pos = divmod(g, len(items))
        out.append(items[_epoch_order(len(items), derive_seed(seed, tag, epoch))[pos]])
    return out


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int) -> list[int]:
    """The seeded permutation of one epoch (cached: every micro-batch of the epoch reads it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


class _Stream:
    """Positions in the stream: micro-batch k of step s starts at (s x micro-batches per step + k) x its size."""

    def __init__(self, seed: int, micro_batch_size: int, micro_per_step: int):
        self.seed, self.size, self.per_step = seed, micro_batch_size, micro_per_step

    def start(self, step: int, micro: int) -> int:
        return (step * self.per_step + micro) * self.size


class MinedFailures(_Stream):
    """A fixed failure set, streamed in a seeded order that reshuffles each epoch."""

    def __init__(self, failures: list[Failure], seed: int, micro_batch_size: int, micro_per_step: int):
        super().__init__(seed, micro_batch_size, micro_per_step)
        self.failures = failures

    def for_micro(self, step: int, micro: int) -> list[Failure]:
        return stream(self.failures, self.start(step, micro), self.size, self.seed, "failures")


class OnlineFailures(_Stream):
    """First attempts drawn from the current policy; the first failed attempt of each example is kept."""

    def __init__(self, rollout: Rollout, examples: list[Any], attempts_per_example: int, seed: int,
                 micro_batch_size: int, micro_per_step: int):
        super().__init__(seed, micro_batch_size, micro_per_step)
        self.rollout, self.examples, self.attempts = rollout, examples, attempts_per_example

    def for_micro(self, step: int, micro: int) -> list[Failure]:
        examples = stream(self.examples, self.start(step, micro), self.size, self.seed, "online")
        rows = self.rollout.attempts(examples, n=self.attempts, seed=derive_seed(self.seed, "online", step, micro))
        return [fails[0].as_failure() for row in rows if (fails := failed_attempts(row, limit=1))]


def build_failure_source(cfg: Config, rollout: Rollout, micro_per_step: int, *, accelerator: Any = None,
                         show_progress: bool = True, log: Callable[[str], None] = print) -> FailureSource:
    """`train.online` -> OnlineFailures over `failures.split`; else the mined set (mined or finished here)."""
    fcfg, mb = cfg.failures, cfg.train.micro_batch_size
    if cfg.train.online:
        examples = rollout.task.load_examples(fcfg.split, fcfg.num_examples, seed=cfg.seed)
        return OnlineFailures(rollout, examples, fcfg.attempts_per_example, cfg.seed, mb, micro_per_step)
    # Mining resumes: on a complete failure set it only checks ids, after an interruption it
    # finishes the job, so `r3rl mine` first and `r3rl train` alone give the same set. Every rank
    # mines its share of the chunks; the main process writes the file before mine() returns.
    summary = mine(rollout, fcfg, cfg.seed, show_progress=show_progress, accelerator=accelerator,
                   model=cfg.model, task_options=cfg.task.options)
    log(f"failure set: {summary['failure_set_size']} examples with a failed attempt ({fcfg.path})")
    return MinedFailures(load_failures(fcfg.path, fcfg.max_per_example, task=rollout.task), cfg.seed, mb, micro_per_step)
