"""The sampler alone on [rows, 151,936] logits: before the bfloat16 work vs now, float32 and bfloat16 logits.

Best of --repeats (on a shared machine the minimum is the least disturbed reading).

    PYTHONPATH=. python bench/profile_sampler.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from r3rl.engine.sampling import RowSampling, filter_logits, sample_next  # noqa: E402


def sample_before(logits, sampling, generator):
    """sample_next as it was at commit cad77f6 (the reference of tests/test_bf16_engine.py)."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    greedy = sampling.temperature <= 0
    if not bool(greedy.all()):
        temperature = torch.where(greedy, torch.ones_like(sampling.temperature), sampling.temperature)
        scaled = filter_logits(logits / temperature[:, None], sampling.top_k, sampling.top_p)
        cdf = torch.softmax(scaled, dim=-1).cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, generator=generator) * cdf[:, -1:]
        tokens = torch.where(greedy, tokens, torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1))
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(args.rows, args.vocab, generator=g) * 3
    print(f"sampler, {args.rows} x {args.vocab} logits, {args.threads} threads, best of {args.repeats} (ms)")
    print("| logits | temperature | before | now | now / before |")
    print("| --- | --- | ---: | ---: | ---: |")
    for dtype in (torch.float32, torch.bfloat16):
        x = x32.to(dtype)
        for name, t in (("1 (rollout)", 1.0), ("0 (greedy)", 0.0), ("0.7", 0.7)):
            s = RowSampling(torch.full((args.rows,), t), torch.ones(args.rows), torch.zeros(args.rows, dtype=torch.long))
            before = best(lambda: sample_before(x, s, torch.Generator().manual_seed(1)), args.repeats)
            now = best(lambda: sample_next(x, s, torch.Generator().manual_seed(1)), args.repeats)
            print(f"| {str(dtype).removeprefix('torch.')} | {name} | {1e3 * before:.1f} | {1e3 * now:.1f} | "
                  f"{now / before:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
