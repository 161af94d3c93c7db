"""One training step with each generation backend, weight sync included (the demo's shape by default).

Runs `r3rl train` once per backend, in the Python that has it (hf: this one; vllm: .venv-vllm's, see
`make install-vllm`), on the same model, task and settings, and prints the median step time, its
rollout share (tokens/s) and vLLM's weight push (`weight_sync_s`) from each run's metrics.jsonl. The
first step is left out of the medians (warm-up: compilation, allocator). vLLM's start-up (import and
engine) is outside the steps and printed apart.

    python bench/train_step.py --steps 4                              # both backends, the demo's shape
    python bench/train_step.py --vllm-python .venv-vllm/bin/python --batch 16 --group 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(python: str, backend: str, out: Path, args: argparse.Namespace) -> dict:
    cmd = [python, "-m", "r3rl", "train", f"model.name_or_path={args.model}", "task.name=addition", "seed=0",
           f"generation.backend={backend}", f"failures.path={out / 'failures.jsonl'}", "failures.num_examples=64",
           f"train.output_dir={out}", f"train.steps={args.steps}", f"train.batch_size={args.batch}",
           f"train.micro_batch_size={args.batch}", f"rollout.group_size={args.group}", "train.lora=false",
           "train.beta=0.0", "train.learning_rate=3e-4", "train.save_every=0", "train.eval_every=0"]
    if backend == "vllm":
        cmd += ["generation.vllm.enforce_eager=true", "generation.vllm.dtype=float32",
                "generation.vllm.cpu_kvcache_space_gb=1", "generation.vllm.block_size=32"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{backend}: r3rl train failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    syncs = [r["weight_sync_s"] for r in later if r.get("weight_sync_s") is not None]
    steps = sum(r["step_time"] for r in rows)
    return {"backend": backend, "step_s": statistics.median(r["step_time"] for r in later),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in later),
            "sync_s": statistics.median(syncs) if syncs else None, "outside_steps_s": wall - steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model.name_or_path (default: the demo model)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="failures per step")
    p.add_argument("--group", type=int, default=8, help="reflections per failure")
    p.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    p.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    args = p.parse_args()
    pythons = {"hf": sys.executable, "vllm": args.vllm_python}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            out = Path(tmp) / backend
            out.mkdir()
            results.append(run(pythons[backend], backend, out, args))
    print(f"r3rl train, {args.model}, {args.batch} failures x G={args.group} per step, median of steps 2-{args.steps}")
    print("| backend | step (s) | rollout tok/s | weight sync (s) | start-up + mining + save, outside the steps (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        sync = f"{r['sync_s']:.3f}" if r["sync_s"] is not None else "none (shares the model)"
        print(f"| {r['backend']} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | {sync} | {r['outside_steps_s']:.0f} |")


if __name__ == "__main__":
    main()
