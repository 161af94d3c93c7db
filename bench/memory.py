"""Peak memory of one GRPO training step: chunked LM head at completion positions vs full logits.

One step = forward of the policy log-probs over a batch of reflections, the clipped
GRPO loss, and backward (no optimizer step: its state is the same in every variant).
The model is a random Qwen2 with Qwen's 151,936-token vocabulary and a small body,
so the LM head dominates, as it does for 0.5B-1.5B models with long prompts.

Variants:
    full            model(...).logits on every position, [B, T, V]        (full_logits_logprobs)
    chunk_nockpt    head on completion positions only, chunks kept for backward
    chunk           head on completion positions, each chunk recomputed in backward
    ... +gc         the same with model.gradient_checkpointing_enable() on the body

CPU: every variant runs in a fresh subprocess and reports
resource.getrusage(RUSAGE_SELF).ru_maxrss minus the resident set size right before
the step (Linux). CUDA: torch.cuda.max_memory_allocated minus memory_allocated
before the step.

    PYTHONPATH=. python bench/memory.py                      # 8 x (512 + 128), hidden 256, CPU float32
    PYTHONPATH=. python bench/memory.py --device cuda --dtype bfloat16 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = {
    # name: (method, checkpoint_chunks, gradient_checkpointing)
    "full": ("full", False, False),
    "chunk_nockpt": ("chunk", False, False),
    "chunk": ("chunk", True, False),
    "full+gc": ("full", False, True),
    "chunk+gc": ("chunk", True, True),
}


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_step(args: argparse.Namespace, variant: str) -> dict:
    """Build the model and batch, then measure one forward + backward. Runs in the worker process."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from r3rl.training import grpo, logprobs

    method, ckpt_chunks, grad_ckpt = VARIANTS[variant]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = AutoConfig.for_model(
        "qwen2", vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64), num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=args.context + args.reflection, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    model.train()  # HF only checkpoints layers in training mode; Qwen2 has no dropout to perturb the numbers
    if grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    gen = torch.Generator().manual_seed(1)
    contexts = torch.randint(0, args.vocab, (args.batch, args.context), generator=gen).tolist()
    reflections = torch.randint(0, args.vocab, (args.batch, args.reflection), generator=gen).tolist()
    ids, am, cm = (t.to(device) for t in grpo.build_completion_batch(contexts, reflections, pad_id=0))  # [B, T]
    logp_old = (-12.0 + 0.1 * torch.randn(ids.shape, generator=gen)).to(device) * cm  # [B, T]
    adv = torch.randn(args.batch, generator=gen).to(device)  # [B]

    def step() -> float:
        if method == "full":
            logp = logprobs.full_logits_logprobs(model, ids, am, cm)  # [B, T]
        else:
            logp = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=args.chunk_size,
                                            checkpoint_chunks=ckpt_chunks)  # [B, T]
        loss, _ = grpo.policy_loss(logp, logp_old, adv, cm)
        loss.backward()
        return loss.item()

    if device.type == "cuda":
        step()  # warm-up: kernels, cuBLAS workspace; then measure a clean step
        model.zero_grad(set_to_none=False)  # keep .grad allocated, as in training after the first step
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - before
        return {"variant": variant, "peak_mib": peak / 2**20, "seconds": seconds, "exact": True}

    # CPU: ru_maxrss is a high-water mark for the whole process, so only the first step can be
    # measured, and only if it climbs above whatever model building reached before.
    before = _rss_bytes()
    maxrss_before = _maxrss_bytes()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    maxrss_after = _maxrss_bytes()
    return {
        "variant": variant,
        "peak_mib": (maxrss_after - before) / 2**20,
        "seconds": seconds,
        # False: the step never exceeded the pre-step high-water mark; the figure is an upper bound.
        "exact": maxrss_after > maxrss_before,
        "rss_before_mib": before / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="sequences (reflections) in the step")
    p.add_argument("--context", type=int, default=512, help="context tokens per sequence")
    p.add_argument("--reflection", type=int, default=128, help="reflection (completion) tokens per sequence")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary size (Qwen2/2.5: 151936)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, nargs="+", default=[1024, 256], help="chunk sizes to try")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.chunk_size = args.chunk_size[0]
        print(json.dumps(run_step(args, args.worker)))
        return

    jobs = []
    for variant in args.variants:
        sizes = args.chunk_size if VARIANTS[variant][0] == "chunk" else args.chunk_size[:1]
        jobs += [(variant, size) for size in sizes]
    n_tok = args.batch * args.reflection
    print(f"one step: {args.batch} x ({args.context} context + {args.reflection} reflection) tokens, "
          f"vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, {args.dtype} on {args.device}")
    print(f"[N, V] logits at the {n_tok} completion positions: {n_tok * args.vocab * 4 / 2**20:.0f} MiB in float32; "
          f"[B, T, V] on all positions: {args.batch * (args.context + args.reflection) * args.vocab * 4 / 2**20:.0f} MiB")
    print(f"{'variant':<14}{'chunk':>7}{'peak MiB':>11}{'step s':>9}")
    rows = []
    for variant, size in jobs:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--chunk-size", str(size)]
        for flag in ("batch", "context", "reflection", "vocab", "hidden", "layers", "device", "dtype"):
            cmd += [f"--{flag}", str(getattr(args, flag))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            print(f"{variant:<14}{size:>7}  failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["chunk_size"] = size if VARIANTS[variant][0] == "chunk" else None
        rows.append(row)
        mark = "" if row["exact"] else " (upper bound)"
        chunk = str(size) if row["chunk_size"] else "-"
        print(f"{variant:<14}{chunk:>7}{row['peak_mib']:>11.0f}{row['seconds']:>9.2f}{mark}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
