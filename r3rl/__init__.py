"""r3rl: Reflect, Retry, Reward.

Self-reflection reinforcement learning for language models (Bensal et al., 2025,
arXiv 2505.24726): when a verifier says a first attempt failed, the model writes a
reflection and retries; GRPO rewards the reflection tokens, and only those, by
whether the retry passed.

The Python API (the same functions the `r3rl` commands call; see r3rl/api.py and the README):

    import r3rl

    cfg = r3rl.load_config("my.yaml", ["train.steps=10"])
    r3rl.evaluate(cfg, output_dir="runs/before")      # results.json's content
    final = r3rl.train(cfg)                            # the final model's folder
    r3rl.evaluate(cfg, model=final, output_dir="runs/after")
    task = r3rl.load_task("countdown")

Names load on first use, so `import r3rl` (and the command line's start) stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "train": "r3rl.api", "evaluate": "r3rl.api", "mine": "r3rl.api", "report": "r3rl.api",
    "load_config": "r3rl.config", "Config": "r3rl.config",
    "load_task": "r3rl.tasks", "Task": "r3rl.tasks", "Example": "r3rl.tasks", "Verdict": "r3rl.tasks",
    "InputError": "r3rl.errors", "R3RLError": "r3rl.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'r3rl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
