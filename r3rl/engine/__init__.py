"""Generation backends behind one interface (see base.py).

The transformers backend and the loaders import torch and transformers, so they
are imported lazily: code that only needs the interface (a scripted fake engine
in a test, for instance) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from r3rl.engine.base import Continuation, Engine, ThenFn

if TYPE_CHECKING:
    from r3rl.engine.factory import build_engine, load_engine
    from r3rl.engine.hf import HFEngine
    from r3rl.engine.loading import load_model

__all__ = ["Continuation", "Engine", "HFEngine", "ThenFn", "build_engine", "load_engine", "load_model"]

_LAZY = {"HFEngine": "r3rl.engine.hf", "load_model": "r3rl.engine.loading", "load_engine": "r3rl.engine.factory",
         "build_engine": "r3rl.engine.factory"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'r3rl.engine' has no attribute {name!r}")
