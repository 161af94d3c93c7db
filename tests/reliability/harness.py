"""Running real `r3rl` commands under fault injection, and checking what they leave behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
# wall-clock figures differ between any two runs: the rate, the step's time and its time by phase
TIMING_KEYS = ("tokens_per_s", "step_time", "weight_sync_s", "time_generation_s", "time_policy_s",
               "time_reference_s", "time_optimizer_s")

# The demo model on the addition task, small enough that a whole `r3rl train` takes seconds.
TINY = [
    "model.name_or_path=demo", "task.name=addition", "seed=0",
    "generation.max_attempt_tokens=12", "generation.max_reflection_tokens=24", "generation.max_retry_tokens=12",
    "rollout.group_size=4",
]
MINE = TINY + ["failures.num_examples=150", "failures.attempts_per_example=2"]  # 3 chunks of 64
TRAIN = TINY + [
    "failures.num_examples=70", "failures.attempts_per_example=2", "train.lora=false",
    "train.learning_rate=3e-4", "train.beta=0.01", "train.steps=6", "train.batch_size=4", "train.micro_batch_size=2",
    "train.save_every=2", "train.keep_checkpoints=2", "train.deterministic=true",
]
EVAL = TINY + ["eval.num_examples=140", "eval.samples_per_example=1"]


def r3rl(args: list[str], cwd: Path, fault: str = "", counts: Path | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    """`r3rl ARGS` in a fresh process with the fault hooks installed (see tests/reliability/faults.py)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", R3RL_FAULT=fault)
    env.pop("R3RL_FAULT_COUNTS", None)
    if counts is not None:
        env["R3RL_FAULT_COUNTS"] = str(counts)
    return subprocess.run([sys.executable, "-m", "tests.reliability.faults", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stderr[-3000:]}"


def jsonl_rows(path: Path, allow_partial_tail: bool = True) -> list[dict[str, Any]]:
    """Complete rows of a JSONL file; only an unterminated last line may be unreadable (a kill mid-append)."""
    if not path.exists():
        return []
    data = path.read_text(encoding="utf-8")
    lines = data.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    assert allow_partial_tail or not tail, f"{path}: unterminated last line {tail[:80]!r}"
    return [json.loads(line) for line in lines if line.strip()]


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def weights(folder: Path) -> dict[str, Any]:
    """Every tensor of a folder's *.safetensors files (raises on a truncated or garbled file)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[f"{f.name}:{k}"] = st.get_tensor(k)
    return out


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def check_latest_checkpoint(run: Path) -> int | None:
    """The checkpoint a resume would trust is complete and readable; returns its step."""
    from r3rl.training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert ckpt.name == f"step-{state['step']:07d}"
    assert weights(ckpt), f"{ckpt}: no weights"
    from accelerate.utils.other import load

    for name in ("optimizer.bin", "random_states_0.pkl"):
        # loading proves the file is whole; accelerate's load is torch.load(weights_only=True) with numpy arrays allowed
        load(ckpt / name, map_location="cpu")
    return int(state["step"])


def plan(seed: int, points: list[str], counts: dict[str, int], n: int) -> list[str]:
    """n seeded faults 'point:k', each at a call the uninterrupted run makes (k <= its count)."""
    rng = random.Random(seed)
    usable = [p for p in points if counts.get(p, 0) > 0]
    assert usable, f"none of {points} ran: {counts}"
    return [f"{p}:{rng.randint(1, counts[p])}" for p in (rng.choice(usable) for _ in range(n))]
