"""Training step, per-row against shared-prefix (train.shared_prefix), at the paper's shapes.

One step = the policy log-probs (completion_logprobs: body, then the LM head chunked over the
completion positions), a GRPO-shaped loss, backward and one AdamW step; no generation. Each
(shape, layout) runs in a fresh subprocess on a random-weight Qwen2 of the 0.5B width (hidden 896,
14 heads, 2 KV heads, intermediate 4864, vocabulary 151,936; --layers of them), float32 on CPU.
One micro-batch holds one group: G rows of [prefix + suffix].

Reported per (shape, layout): the median step time over --repeats, the two layouts' steps
alternating in one process after a warm-up step of each (so a shared machine's load drifts over both
alike); and, each layout in a fresh subprocess of one step, the activation memory autograd keeps for
backward (bytes of the distinct tensors saved during the forward, by saved_tensors_hooks) and the peak
RSS rise of the step over the process once the model and AdamW's state exist (Linux ru_maxrss;
gradients included, which are the same in both layouts).

    PYTHONPATH=. python bench/shared_prefix.py --layers 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {  # name: (prefix tokens, suffix tokens, G)
    "function_calling": (1000, 128, 8),
    "countdown": (200, 64, 8),
    "short_prefix": (32, 128, 8),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r3rl.training import grpo
    from r3rl.training.logprobs import completion_logprobs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(cfg).float().train()
    prefix, suffix, g = SHAPES[args.shape]
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randint(0, 151936, (prefix,), generator=gen).tolist()
    comps = [torch.randint(0, 151936, (suffix,), generator=gen).tolist() for _ in range(g)]
    batch = grpo.build_completion_batch([ctx] * g, comps, 0)
    layouts = {"per_row": None, "grouped": torch.zeros(g, dtype=torch.long)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for p in model.parameters():  # AdamW's state exists before the measured steps
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    adv = torch.linspace(-1, 1, g)

    def step(groups, saved: list | None = None) -> float:
        t0 = time.perf_counter()
        if saved is not None:
            seen: dict[int, int] = {}

            def pack(t):
                try:
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                except Exception:
                    pass
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                logp = completion_logprobs(model, *batch, chunk_size=256, group_ids=groups)
            saved.append(sum(seen.values()))
        else:
            logp = completion_logprobs(model, *batch, chunk_size=256, group_ids=groups)
        loss, _ = grpo.policy_loss(logp, logp.detach(), adv, batch[2])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    if args.layout == "both":  # timing: warm-up of each, then the layouts alternate
        for groups in layouts.values():
            step(groups)
        times: dict[str, list[float]] = {k: [] for k in layouts}
        for _ in range(args.repeats):
            for name, groups in layouts.items():
                times[name].append(step(groups))
        return {"shape": args.shape, "times": times, **{f"{k}_step_s": statistics.median(v) for k, v in times.items()}}
    base = _rss()
    saved: list[int] = []
    step(layouts[args.layout], saved)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"shape": args.shape, "layout": args.layout, "activations_mib": saved[0] / 2**20,
            "peak_rss_rise_mib": peak / 2**20,
            "body_tokens": int(batch[1].sum()) if args.layout == "per_row" else prefix + g * suffix}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.shape:
        print(json.dumps(worker(args)))
        return
    rows = []
    for shape in args.shapes.split(","):
        res = {}
        for layout in ("per_row", "grouped", "both"):
            cmd = [sys.executable, __file__, "--shape", shape, "--layout", layout, "--layers", str(args.layers),
                   "--threads", str(args.threads), "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            res[layout] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(res[layout]), flush=True)
        a, b = res["per_row"], res["grouped"]
        a["step_s"], b["step_s"] = res["both"]["per_row_step_s"], res["both"]["grouped_step_s"]
        rows.append((shape, a, b))
    print(f"\nQwen2 0.5B width, {args.layers} layer(s), float32, CPU, {args.threads} thread(s); median of {args.repeats} steps")
    print("| shape | body tokens per-row / grouped | step s per-row | step s grouped | speed-up | activations MiB per-row / grouped | ratio | peak RSS rise MiB per-row / grouped |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, a, b in rows:
        print(f"| {shape} {SHAPES[shape]} | {a['body_tokens']} / {b['body_tokens']} | {a['step_s']:.2f} | {b['step_s']:.2f} | "
              f"{a['step_s'] / b['step_s']:.2f}x | {a['activations_mib']:.0f} / {b['activations_mib']:.0f} | "
              f"{a['activations_mib'] / b['activations_mib']:.2f}x | {a['peak_rss_rise_mib']:.0f} / {b['peak_rss_rise_mib']:.0f} |")


if __name__ == "__main__":
    main()
