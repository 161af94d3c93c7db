"""The failure source: which failures micro-batch k of step s trains on (a function of seed, step and k only)."""

from __future__ import annotations

import torch

from r3rl.environment.rollout import Attempt, Failure, derive_seed
from r3rl.training.failures import MinedFailures, OnlineFailures
from r3rl.types import Verdict


def _order(n: int, seed: int, epoch: int, tag: str) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, tag, epoch))).tolist()


def test_mined_failures_stream_in_a_seeded_order_that_reshuffles_each_epoch():
    items = [Failure({"id": str(i)}, f"attempt {i}") for i in range(6)]
    source = MinedFailures(items, seed=7, micro_batch_size=2, micro_per_step=2)
    taken = [source.for_micro(step, micro) for step in range(3) for micro in range(2)]  # 12 = two epochs
    flat = [int(f.example["id"]) for batch in taken for f in batch]
    assert flat[:6] == _order(6, 7, 0, "failures") and flat[6:] == _order(6, 7, 1, "failures")
    assert sorted(flat[:6]) == sorted(flat[6:]) == list(range(6))  # every failure once per epoch
    # micro-batch 1 of step 2 is the stream's items 10, 11 whichever process asks, and however often
    assert source.for_micro(2, 1) == taken[5] and flat[10:] == [int(f.example["id"]) for f in taken[5]]


class _Attempts:
    """A rollout whose first attempts are scripted: example i passes on attempt j when (i + j) % 3 == 0."""

    def __init__(self):
        self.calls = []

    def attempts(self, examples, n, seed):
        self.calls.append(([e["id"] for e in examples], n, seed))
        return [[Attempt(e, f"{e['id']}/{j}", Verdict((int(e["id"]) + j) % 3 == 0, "no", "wrong"), [])
                 for j in range(n)] for e in examples]


def test_online_failures_keep_the_first_failed_attempt_of_each_example():
    rollout = _Attempts()
    examples = [{"id": str(i)} for i in range(4)]
    source = OnlineFailures(rollout, examples, attempts_per_example=2, seed=3, micro_batch_size=4, micro_per_step=1)
    got = source.for_micro(0, 0)
    ids = [e["id"] for e in (examples[i] for i in _order(4, 3, 0, "online"))]
    assert rollout.calls == [(ids, 2, derive_seed(3, "online", 0, 0))]
    # attempt j of example i fails unless (i + j) % 3 == 0: example 0 fails on attempt 1, 1 and 2 on attempt 0
    first = {"0": "0/1", "1": "1/0", "2": "2/0", "3": "3/1"}
    assert [(f.example["id"], f.attempt_text, f.attempt_class) for f in got] == [(i, first[i], "wrong") for i in ids]


def test_online_examples_whose_attempts_all_pass_give_nothing():
    rollout = _Attempts()
    source = OnlineFailures(rollout, [{"id": "0"}], attempts_per_example=1, seed=0, micro_batch_size=1, micro_per_step=1)
    assert source.for_micro(0, 0) == []  # example 0's only attempt (j = 0) passes
