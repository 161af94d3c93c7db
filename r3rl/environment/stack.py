"""The rollout stack, built in one place: model + tokenizer -> engine -> Rollout over the task.

Every command that generates (mine, eval, train, the demo, the benchmarks) builds its rollout here,
so the generation and rollout config sections reach the engine the same way everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ContextManager

from r3rl.engine.factory import build_engine
from r3rl.environment.rollout import Rollout
from r3rl.tasks import load_task

if TYPE_CHECKING:
    from r3rl.config import Config
    from r3rl.tasks.base import Task


def build_rollout(
    cfg: "Config",
    *,
    task: "Task | None" = None,
    model: Any = None,
    tokenizer: Any = None,
    autocast: Callable[[], ContextManager[Any]] | None = None,
    device: Any = None,
) -> Rollout:
    """The Rollout a config asks for. Pass `model`/`tokenizer` to generate with a model already in memory
    (the trainer's policy); otherwise the backend loads `cfg.model`. `task` defaults to `cfg.task`."""
    if task is None:
        task = load_task(cfg.task.name, **cfg.task.options)
    engine = build_engine(cfg.generation, cfg.model, model=model, tokenizer=tokenizer, autocast=autocast, device=device)
    return Rollout(engine, task, cfg.generation, cfg.rollout)
