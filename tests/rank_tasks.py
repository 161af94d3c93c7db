"""Tasks that misbehave on one rank only (RANK=1 of a launched run): the disagreeing-rank tests of
tests/test_rank_agreement.py. On rank 0, and in a single process, each is CoinTask."""

from __future__ import annotations

import atexit
import os
import signal
import time
from pathlib import Path

from r3rl.types import Verdict

from tests.trainer_fixtures import CoinTask, _flag_retries_of


def _count_backwards(path: Path) -> None:
    """Wrap accelerate's Accelerator.backward (once per process) to count calls; write the count at exit."""
    from accelerate import Accelerator

    if getattr(Accelerator.backward, "counted", False):
        return
    original, calls = Accelerator.backward, [0]

    def backward(self, loss, **kwargs):
        calls[0] += 1
        return original(self, loss, **kwargs)

    backward.counted = True
    Accelerator.backward = backward
    atexit.register(lambda: path.write_text(str(calls[0])))


def _rank_one() -> bool:
    return os.environ.get("RANK") == "1"


class RankOneNeverTask(CoinTask):
    """Rank 1's retries never pass: all its groups have equal rewards (no row in its loss), rank 0's do not.
    With R3RL_TEST_BACKWARDS=DIR each rank counts its backward passes (DeepSpeed ZeRO-2 reduces gradients
    inside every one, so every rank must run as many) into DIR/backward-rank<N>.txt at exit."""

    def __init__(self, **options):
        super().__init__(**options)
        if os.environ.get("R3RL_TEST_BACKWARDS"):
            _count_backwards(Path(os.environ["R3RL_TEST_BACKWARDS"]) / f"backward-rank{os.environ.get('RANK', '0')}.txt")

    def verify(self, ex, completion):
        return Verdict(False, "never on rank 1") if _rank_one() else super().verify(ex, completion)


class RankOneBrokenTask(CoinTask):
    """Rank 1's verifier raises on every retry (past rollout.max_verifier_errors it stops that rank); first
    attempts, which the failure set's validation verifies again, keep their verdicts."""

    retrying = False  # True while Rollout.reflect_and_retry runs

    def __init__(self, **options):
        super().__init__(**options)
        _flag_retries_of(RankOneBrokenTask)

    def verify(self, ex, completion):
        if _rank_one() and RankOneBrokenTask.retrying:
            raise ZeroDivisionError("a bug in the task on rank 1")
        return super().verify(ex, completion)


class RankOneLongPromptTask(CoinTask):
    """Rank 1's prompts are far over generation.max_prompt_tokens (online training draws attempts there)."""

    def prompt(self, ex):
        return super().prompt(ex) + (" and more" * 200 if _rank_one() else "")


class RankOneKilledTask(CoinTask):
    """Rank 1 dies (SIGKILL) at its first verify call; with R3RL_TEST_FREEZE=1 it stops (SIGSTOP) instead,
    as a rank on a lost node that never answers again."""

    def verify(self, ex, completion):
        if _rank_one():
            os.kill(os.getpid(), signal.SIGSTOP if os.environ.get("R3RL_TEST_FREEZE") else signal.SIGKILL)
        return super().verify(ex, completion)


class RankOneSlowTask(CoinTask):
    """Rank 1's verifier takes 0.5 s a call: its rollouts take seconds longer than rank 0's."""

    def verify(self, ex, completion):
        if _rank_one():
            time.sleep(0.5)
        return super().verify(ex, completion)
