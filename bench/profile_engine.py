"""Where the HF engine's time goes: by engine phase and by torch operator, decode and prefill apart.

Runs the two-stage rollout workload of bench/rollout.py (F failures x G reflections sampled
at temperature 1 with the stop set on, then one retry per reflection after the retry
suffix) through `HFEngine` on the 0.5B shape with random weights, and times:

* phases (wall clock, exclusive): linear layers (every nn.Linear but the LM head), the LM
  head, attention (split into the shared-prefix part, the row's own part and the
  log-sum-exp merge when cascade attention is on), KV-cache writes, the rest of the model
  (norms, rotary, SiLU, residual adds, embedding, dtype casts between them), sampling over
  the vocabulary, and the scheduler's Python between forwards. Every forward is labelled
  decode (one token per row) or prefill (a chunk);
* operators (torch.profiler, self CPU time), the top ones and every dtype conversion.

The timers wrap the engine's functions from outside (nothing in r3rl is changed); they are
exact on CPU, where every kernel runs synchronously.

    PYTHONPATH=. python bench/profile_engine.py --dtype bfloat16
    PYTHONPATH=. python bench/profile_engine.py --dtype float32 --autocast bfloat16
    PYTHONPATH=. python bench/profile_engine.py --dtype bfloat16 --cpu-matmul native   # PyTorch's bf16 kernels
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.rollout import build_model, make_workload, stop_set  # noqa: E402
from r3rl.config import CpuMatmul  # noqa: E402
from r3rl.engine import Continuation, HFEngine  # noqa: E402
from r3rl.engine import batch, slots  # noqa: E402
from r3rl.types import SamplingParams  # noqa: E402


class Timers:
    """Exclusive wall time per (forward kind, phase); the kind is set while an engine forward runs."""

    def __init__(self) -> None:
        self.s: collections.Counter[tuple[str, str]] = collections.Counter()
        self.kind = "outside"
        self.calls: collections.Counter[str] = collections.Counter()

    def wrap(self, phase: str, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.s[self.kind, phase] += time.perf_counter() - t0
        return timed


def install(model: torch.nn.Module, timers: Timers) -> None:
    """Wrap the engine's phases (module attributes are patched: the engine looks them up at call time)."""
    # Forwards: SlotScheduler._call runs one model call; its `decode` argument says which kind.
    orig_call = batch.SlotScheduler._call

    def call(self, rows_, chunks, starts, offsets, store, decode, prefixes=None):
        before = timers.kind
        timers.kind = "decode" if decode else "prefill"
        timers.calls[timers.kind] += 1
        t0 = time.perf_counter()
        try:
            return orig_call(self, rows_, chunks, starts, offsets, store, decode, prefixes)
        finally:
            timers.s[timers.kind, "forward"] += time.perf_counter() - t0
            timers.kind = before

    batch.SlotScheduler._call = call
    batch.sample_next = timers.wrap("sampling", batch.sample_next)
    slots.SlotCache.update = timers.wrap("kv write", slots.SlotCache.update)
    # Attention: the registered function looks these module globals up at call time.
    slots._prefix_kv = timers.wrap("attn prefix", slots._prefix_kv)
    orig_cascade = slots.cascade_attention
    orig_partial = slots._partial
    orig_decode = slots._decode_attention
    state = {"part": 0}

    def partial(*a, **k):  # inside cascade attention: the first call is the prefix part, the second the own
        phase = "attn prefix" if state["part"] == 0 else "attn own"
        state["part"] += 1
        return timers.wrap(phase, orig_partial)(*a, **k)

    def cascade(*a, **k):
        state["part"] = 0
        t0 = time.perf_counter()
        before = timers.s.copy()
        out = orig_cascade(*a, **k)
        inner = sum(timers.s[timers.kind, p] - before[timers.kind, p] for p in ("attn prefix", "attn own"))
        timers.s[timers.kind, "attn merge + layout"] += time.perf_counter() - t0 - inner
        return out

    slots._partial = partial
    slots.cascade_attention = cascade
    slots._decode_attention = timers.wrap("attn own", orig_decode)
    # slot_attention itself: whatever it does around those parts (dtype casts, the output transpose).
    orig_attn = slots.slot_attention

    def attention(*a, **k):
        t0 = time.perf_counter()
        before = timers.s.copy()
        out = orig_attn(*a, **k)
        inner = sum(timers.s[timers.kind, p] - before[timers.kind, p]
                    for p in ("attn prefix", "attn own", "attn merge + layout"))
        timers.s[timers.kind, "attn merge + layout"] += time.perf_counter() - t0 - inner
        return out

    from transformers import AttentionInterface
    AttentionInterface.register(slots.ATTN_NAME, attention)
    # Linear layers and the LM head by module hooks.
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            phase = "lm head" if module is head else "linear"
            module.register_forward_pre_hook(lambda m, a, p=phase: m.__dict__.__setitem__("_t0", time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, p=phase: timers.s.__setitem__(
                (timers.kind, p), timers.s[timers.kind, p] + time.perf_counter() - m._t0))


def run(model, tok, w, stops, seed: int, slots_: int, cpu_matmul: str = "auto") -> int:
    engine = HFEngine(model, tok, max_batch_size=slots_, stop_token_ids=stops, shared_prefix_attention="auto",
                      cpu_matmul=cpu_matmul)
    params = SamplingParams(max_new_tokens=w.reflection_tokens, temperature=1.0, seed=seed)
    retry = SamplingParams(max_new_tokens=w.retry_tokens, temperature=1.0, seed=seed)
    out = engine.generate(w.contexts, params, n=w.group,
                          then=lambda i, j, d, g: Continuation(retry, suffix_ids=w.suffix) if d == 0 else None)
    return sum(len(g.token_ids) + len(g.next.token_ids) for row in out for g in row)


PHASES = ["linear", "lm head", "attn prefix", "attn own", "attn merge + layout", "kv write", "other model ops",
          "sampling"]


def report(timers: Timers, wall: float, tokens: int) -> None:
    s = timers.s
    print(f"\nphases: {wall:.2f} s wall, {tokens} generated tokens ({tokens / wall:.1f} tok/s); "
          f"forwards: {dict(timers.calls)}")
    print(f"| phase | decode s | decode % | prefill s | prefill % | all % |")
    print(f"| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = {}
    for kind in ("decode", "prefill"):
        inner = sum(s[kind, p] for p in PHASES if p not in ("other model ops", "sampling"))
        rows[kind] = {p: s[kind, p] for p in PHASES}
        rows[kind]["other model ops"] = s[kind, "forward"] - inner
    rows["decode"]["sampling"] = s["outside", "sampling"]  # sampling runs between forwards
    rows["prefill"]["sampling"] = 0.0
    python = wall - s["decode", "forward"] - s["prefill", "forward"] - s["outside", "sampling"]
    dec_total = s["decode", "forward"] + s["outside", "sampling"]
    pre_total = s["prefill", "forward"]
    for p in PHASES:
        d, q = rows["decode"][p], rows["prefill"][p]
        print(f"| {p} | {d:.2f} | {100 * d / dec_total:.1f}% | {q:.2f} | {100 * q / max(pre_total, 1e-9):.1f}% "
              f"| {100 * (d + q) / wall:.1f}% |")
    print(f"| scheduler Python (between forwards) | | | | | {100 * python / wall:.1f}% |")
    print(f"| total | {dec_total:.2f} | | {pre_total:.2f} | | {wall:.2f} s |")


def op_table(prof, wall: float, top: int) -> None:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"\noperators (torch.profiler, self CPU time, {total:.2f} s under the profiler):")
    print("| operator | calls | self s | % |")
    print("| --- | ---: | ---: | ---: |")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e6:.2f} | {100 * e.self_cpu_time_total / 1e6 / total:.1f}% |")
    conv = [e for e in events if e.key in ("aten::to", "aten::_to_copy", "aten::copy_")]
    print("dtype conversions and copies: " + ", ".join(
        f"{e.key} {e.count} calls {e.self_cpu_time_total / 1e6:.2f} s" for e in conv))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="0.5b")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="the weights' dtype")
    p.add_argument("--autocast", choices=["bfloat16"], default=None, help="run under CPU autocast (float32 weights)")
    p.add_argument("--cpu-matmul", "--half-matmul", choices=CpuMatmul.values(), default="auto",
                   help="the engine's generation.cpu_matmul (auto: float32 products on CPUs without bf16 units)")
    p.add_argument("--workload", choices=["countdown", "fc"], default="countdown")
    p.add_argument("--failures", type=int, default=2)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--reflection-tokens", type=int, default=64)
    p.add_argument("--retry-tokens", type=int, default=64)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-profiler", action="store_true", help="phases only (the profiler adds per-op overhead)")
    p.add_argument("--top", type=int, default=18)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, tok = build_model(args.model, torch.device("cpu"), dtype)
    vocab = model.config.vocab_size
    w = make_workload(args.workload, vocab, args.failures, args.group, args.reflection_tokens, args.retry_tokens)
    stops = stop_set(vocab)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.autocast else nullcontext
    warm = make_workload(args.workload, vocab, 1, 2, 2, 2, seed=1)
    with amp():
        run(model, tok, warm, stops, 1, args.max_batch_size, args.cpu_matmul)
    timers = Timers()
    install(model, timers)
    prof_ctx = nullcontext() if args.no_profiler else torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    print(f"{args.model} {args.dtype} weights{' + autocast ' + args.autocast if args.autocast else ''}, "
          f"cpu_matmul {args.cpu_matmul}, "
          f"{args.threads} threads, {args.workload} {args.failures} x {args.group}, limits "
          f"{args.reflection_tokens}/{args.retry_tokens}, {args.max_batch_size} slots")
    with prof_ctx as prof, amp():
        t0 = time.perf_counter()
        tokens = run(model, tok, w, stops, 0, args.max_batch_size, args.cpu_matmul)
        wall = time.perf_counter() - t0
    report(timers, wall, tokens)
    if prof is not None:
        op_table(prof, wall, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
