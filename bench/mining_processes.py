"""Mining wall time on 1 process vs 2 processes (`accelerate launch`, CPU ranks over gloo).

The work: the demo's failure mining (the built-in model on addition, 4 first attempts per
example, attempts of up to 16 tokens), `--examples` examples in chunks of `--chunk`.
Each process runs with one torch thread, so 2 processes use 2 cores where 1 uses one:
the ideal ratio is 2. Timed: `mine()` alone, between two barriers (process start and
model loading excluded, the gather of records and the main process's writes included).
The script also checks that both runs wrote the same failure set, line for line.

    PYTHONPATH=. python bench/mining_processes.py                 # 2048 examples, 3 repeats
    PYTHONPATH=. python bench/mining_processes.py --examples 512 --repeats 5

Figures are medians over repeats; each repeat starts fresh processes and an empty failure set.
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


def worker(args: argparse.Namespace) -> None:
    """One rank of the timed run (launched by `main`)."""
    import torch

    torch.set_num_threads(1)
    from r3rl.api import _rollout
    from r3rl.config import load_config
    from r3rl.mining.failure_set import mine
    from r3rl.runtime.distributed import launched_state, processes

    cfg = load_config(ROOT / "r3rl" / "demo" / "demo.yaml", [
        f"failures.num_examples={args.examples}", f"failures.chunk_size={args.chunk}", f"failures.path={args.output}",
    ])
    state = launched_state()
    roll = _rollout(cfg, device=state.device if state is not None else None)
    procs = processes()
    procs.gather(None)  # barrier: every rank has loaded its model
    t0 = time.perf_counter()
    summary = mine(roll, cfg.failures, cfg.seed, show_progress=False)
    procs.gather(None)
    seconds = time.perf_counter() - t0
    if procs.is_main:
        print("RESULT " + json.dumps({"processes": procs.world, "seconds": seconds, **summary}), flush=True)


def run(procs: int, examples: int, chunk: int, output: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = [str(Path(__file__).resolve()), "--worker", "--examples", str(examples), "--chunk", str(chunk),
              "--output", str(output)]
    if procs == 1:
        cmd = [sys.executable, *script]
    else:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *script]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{procs}-process run failed:\n{res.stderr[-3000:]}")
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            files = {}
            for procs in (1, 2):  # alternate, so a change in the machine's load hits both alike
                out = Path(tmp) / f"r{r}-p{procs}.jsonl"
                res = run(procs, args.examples, args.chunk, out)
                times[procs].append(res["seconds"])
                files[procs] = out.read_text()
                print(f"repeat {r + 1}: {procs} process(es) {res['seconds']:.2f} s "
                      f"({res['failure_set_size']} of {res['examples']} examples with a failure)", flush=True)
            if files[1] != files[2]:
                raise SystemExit("the 1- and 2-process failure sets differ")
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"\nmining {args.examples} examples x 4 attempts (chunks of {args.chunk}), median of {args.repeats}:")
    print(f"  1 process:   {one:.2f} s")
    print(f"  2 processes: {two:.2f} s")
    print(f"  speed-up (1-process time / 2-process time): {one / two:.2f}x   (ideal 2.00x)")
    print(f"  failure sets identical in every repeat: yes; cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
