"""Shared pieces of the trainer tests: a tiny model folder and a task with a random, non-trivial reward."""

from __future__ import annotations

from pathlib import Path

from r3rl.config import Config
from r3rl.tasks.base import Task
from r3rl.types import Verdict


class CoinTask(Task):
    """Passes when the completion has an even number of characters: a random model gets ~50%,
    so GRPO groups carry signal and updates are non-zero (what resume and DDP tests need)."""

    name = "coin"

    def load_examples(self, split="train", n=None, seed=0):
        base = 0 if split == "train" else 1000
        return [{"id": str(base + i), "x": base + i} for i in range(n or 16)]

    def prompt(self, ex):
        return f"Say something about {ex['x']}."

    def verify(self, ex, completion):
        ok = len(completion) % 2 == 0
        return Verdict(ok, "" if ok else "odd length")


def tiny_config(model_dir: Path, out: Path, **train) -> Config:
    cfg = Config()
    cfg.model.name_or_path = str(model_dir)
    cfg.task.name = "tests.trainer_fixtures:CoinTask"
    cfg.generation.max_attempt_tokens = 6
    cfg.generation.max_reflection_tokens = 6
    cfg.generation.max_retry_tokens = 6
    cfg.rollout.group_size = 4
    cfg.failures.num_examples = 16
    cfg.failures.attempts_per_example = 2
    cfg.failures.path = str(out / "failures.jsonl")
    cfg.train.output_dir = str(out)
    cfg.train.steps = 4
    cfg.train.batch_size = 4
    cfg.train.micro_batch_size = 2
    cfg.train.learning_rate = 1e-2
    cfg.train.save_every = 2
    cfg.train.lora = False
    cfg.train.beta = 0.0
    cfg.train.deterministic = True
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def cli_overrides(cfg: Config) -> list[str]:
    """The same config as dotted command-line overrides (for subprocess runs)."""
    from r3rl.config import to_dict

    out = []
    for section, values in to_dict(cfg).items():
        if not isinstance(values, dict):
            out.append(f"{section}={values}")
            continue
        for k, v in values.items():
            if isinstance(v, (dict, list)) or v in ("", None):
                continue
            out.append(f"{section}.{k}={v}")
    return out


class NeverTask(CoinTask):
    """Nothing ever passes: every group's rewards are equal, so there is no learning signal."""

    name = "never"

    def verify(self, ex, completion):
        return Verdict(False, "never")



class BrokenRetryCoinTask(CoinTask):
    """CoinTask whose verifier raises on the retries of even-numbered examples (verdicts of first attempts, in
    mining and in the failure set's validation, stay normal, so there are failures to train on)."""

    raised = 0
    retrying = False  # True while Rollout.reflect_and_retry runs (set by the hook below)

    def __init__(self, **options):
        super().__init__(**options)
        _flag_retries_of(BrokenRetryCoinTask)

    def verify(self, ex, completion):
        if int(ex["id"]) % 2 == 0 and BrokenRetryCoinTask.retrying:
            BrokenRetryCoinTask.raised += 1
            raise ZeroDivisionError("a bug in the task")
        return super().verify(ex, completion)


def _flag_retries_of(task_cls) -> None:
    """The explicit hook: wrap Rollout.reflect_and_retry, the stage that verifies reflections' retries,
    so that `task_cls.retrying` says whether a verify call judges a retry. Installed once per process;
    outside a BrokenRetryCoinTask run it only toggles that flag."""
    from r3rl.environment.rollout import Rollout

    original = Rollout.reflect_and_retry
    if getattr(original, "flags_retries_of", None) is task_cls:
        return

    def reflect_and_retry(self, *args, **kwargs):
        task_cls.retrying = True
        try:
            return original(self, *args, **kwargs)
        finally:
            task_cls.retrying = False

    reflect_and_retry.flags_retries_of = task_cls
    Rollout.reflect_and_retry = reflect_and_retry


def free_port() -> int:
    """A free local TCP port for a launched run's rendezvous: torchrun's default 29500 is shared by every
    2-process test, and the suite runs tests side by side (pytest-xdist), so two launches could collide."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
