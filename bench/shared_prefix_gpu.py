"""The CUDA shared-prefix path (FlexAttention BlockMask): exactness against per-row, then the speed ratio.

Not run in CI (needs a GPU; FlexAttention has no backward on CPU). Two parts, one command:

1. exactness, float32: a tiny random Qwen2 and Llama with attn_implementation=flex_attention;
   grouped log-probs and parameter gradients against the per-row path (flex with its own mask),
   tolerance as tests/test_prefix_group.py (1e-5; TF32 is switched off). Exits 1 on a mismatch.
2. speed: a training step (log-probs, loss, backward, AdamW) of a random Qwen2 of the 0.5B width
   (--layers), bf16 autocast over float32 weights, at the function-calling shape (prefix 1,000,
   suffixes 128, G = 8; --groups groups per micro-batch): median step time and peak memory,
   per-row (the model's flex attention over the padded rows) against grouped.

    PYTHONPATH=. python bench/shared_prefix_gpu.py --layers 24 --groups 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def exactness() -> bool:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from r3rl.training import prefix_group
    from tests.test_prefix_group import TOL, VOCAB, batch, logp_and_grads

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ok = True
    for name, cls, conf in (("qwen2", Qwen2ForCausalLM, Qwen2Config), ("llama", LlamaForCausalLM, LlamaConfig)):
        torch.manual_seed(0)
        model = cls(conf(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         attn_implementation="flex_attention")).float().cuda().train()
        assert prefix_group.unsupported_reason(model, torch.device("cuda")) is None
        for padding in ("right", "left"):
            b, groups = batch(padding)
            b, groups = tuple(t.cuda() for t in b), groups.cuda()
            ref_logp, ref_grads = logp_and_grads(model, b, None)
            logp, grads = logp_and_grads(model, b, groups)
            d_logp = float((logp - ref_logp).abs().max())
            d_grad = max(float((grads[n] - g).abs().max()) / max(1.0, float(g.abs().max())) for n, g in ref_grads.items())
            good = d_logp <= TOL and d_grad <= TOL
            ok &= good
            print(f"exactness {name} {padding}-padded: max |d logp| {d_logp:.2e}, max relative |d grad| {d_grad:.2e} "
                  f"-> {'ok' if good else 'MISMATCH'}")
    return ok


def speed(args: argparse.Namespace) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r3rl.training import grpo
    from r3rl.training.logprobs import completion_logprobs

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=args.layers,
                      num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                      attn_implementation="flex_attention")
    model = Qwen2ForCausalLM(cfg).float().cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    prefix, suffix, g = args.prefix, args.suffix, args.group
    ctxs, comps, gids = [], [], []
    for j in range(args.groups):
        ctx = torch.randint(0, 151936, (prefix,)).tolist()
        for _ in range(g):
            ctxs.append(ctx)
            comps.append(torch.randint(0, 151936, (suffix,)).tolist())
            gids.append(j)
    batch = tuple(t.cuda() for t in grpo.build_completion_batch(ctxs, comps, 0))
    groups = torch.tensor(gids, device="cuda")
    adv = torch.linspace(-1, 1, len(ctxs), device="cuda")
    res = {}
    for layout, gid in (("per_row", None), ("grouped", groups)):
        times = []
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for i in range(args.repeats + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logp = completion_logprobs(model, *batch, group_ids=gid)
            loss, _ = grpo.policy_loss(logp, logp.detach(), adv, batch[2])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i:  # the first step compiles flex attention's kernels
                times.append(time.perf_counter() - t0)
        res[layout] = (statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**30)
        print(f"{layout}: step {res[layout][0]:.3f} s (median of {args.repeats}), peak {res[layout][1]:.2f} GiB over the model")
    print(f"speed-up {res['per_row'][0] / res['grouped'][0]:.2f}x, peak memory ratio {res['per_row'][1] / res['grouped'][1]:.2f}x "
          f"({torch.cuda.get_device_name()}, {args.layers} layers, {args.groups} x (prefix {prefix} + {g} x {suffix}))")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--suffix", type=int, default=128)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/shared_prefix_gpu.py needs a CUDA device")
    ok = exactness()
    speed(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
