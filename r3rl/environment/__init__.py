"""Multi-turn rollouts as environments: a fixed loop over the engine, narrow hooks for a task's turns.

* `trajectory.py`: the record, a `Trajectory` of `Turn`s carried token-in, token-out;
* `scoring.py`: the `Scorer`, which runs the task's verifier on a turn (errors counted and bounded);
* `loop.py`: `Environment` (the hooks) and `run_environment` (the one loop that drives the engine);
* `reflect_retry.py`: r3rl's own turn structure, reflect -> retry (-> reflect -> retry ...).

A new turn structure (a tool's output shown before the retry, a hint, a second reflection) is a
subclass of `ReflectRetryEnvironment` or `Environment` that overrides hooks; the loop, the engine's
KV reuse and the records stay as they are (examples/tool_retry).
"""

from r3rl.environment.loop import Environment, Step, run_environment
from r3rl.environment.reflect_retry import ReflectRetryEnvironment
from r3rl.environment.scoring import VERIFIER_ERROR, Scorer, VerifierError
from r3rl.environment.trajectory import Trajectory, Turn

__all__ = [
    "Environment", "ReflectRetryEnvironment", "Scorer", "Step", "Trajectory", "Turn", "VERIFIER_ERROR",
    "VerifierError", "run_environment",
]
