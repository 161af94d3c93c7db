"""Rollout-stage benchmark: r3rl's HFEngine vs what a TRL user gets without vLLM.

The stage: for each of F failures, G reflections, then one retry per reflection after
a retry suffix (end-of-turn, the retry instruction, the assistant header: 20 tokens).

Default (realistic) mode: reflections and retries sampled at temperature 1 with a stop
set of 1/40 of the vocabulary, so rows stop after very different numbers of tokens;
16 failures x G=8 in one call. Methods, interleaved run by run:

* r3rl: one `HFEngine.generate(contexts, n=G, then=...)` call with shared-prefix
  attention on (each context's KV stored once, attended once per step by its G rows);
* r3rl-copies: the same with it off (each row's slot holds a copy of the context);
* transformers-CB: `model.generate_batch` (continuous batching, paged cache, prefix
  block sharing), one call per stage;
* naive: `model.generate` per stage in 64-row batches (stage 2 prefills every retry
  conversation from scratch);
* vllm: vLLM itself (its CPU build lives in another virtual environment, --vllm-python),
  run in a subprocess by bench/vllm_worker.py on the same random weights saved to a folder
  (--vllm-models), prefix caching on, the retry given as context + reflection + suffix ids.
  Its start-up (import, load, compile unless --vllm-eager) is timed apart from the runs;
  vLLM's CPU build refuses per-request seeds, so it is seeded once per process.

`--dtypes float32 bfloat16` runs everything once per dtype in one process and ends with a
summary: tok/s of each method in each dtype, r3rl / vllm, and the decode forwards' FLOP/s
as a fraction of the bfloat16 matmul ceiling measured in the same run (--decode-timing).

Agreement is checked on a greedy slice (2 failures): every method against r3rl. Speed
is generated tokens / s (median over repeats); --decode-timing also times every
forward and reports the one-token (decode) forwards' FLOP/s as a fraction of a matmul
measured here; KV MiB is the engine's peak slot + prefix store.

`--fixed`: the old fixed-length workload (no stop tokens, greedy, r3rl vs naive, every
sequence checked token for token). Prompts are random token ids (random-weight models:
speed only). Countdown-shaped contexts are 110-130 tokens, function-calling-shaped ones
carry a 1,000-token tool schema (1,030-1,070 tokens in all).

    PYTHONPATH=. python bench/rollout.py --quick
    PYTHONPATH=. python bench/rollout.py --threads 1 --workload fc
    PYTHONPATH=. python bench/rollout.py --model 0.5b --workload countdown --methods r3rl r3rl-copies --decode-timing
    PYTHONPATH=. python bench/rollout.py --device cuda --dtype bfloat16 --model qwen2.5-1.5b
    PYTHONPATH=. python bench/rollout.py --model 0.5b --workload countdown --reflection-tokens 64 \
        --retry-tokens 64 --methods r3rl vllm --dtypes float32 bfloat16 --decode-timing --repeats 1
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from r3rl.config import CpuMatmul  # noqa: E402
from r3rl.engine import Continuation, HFEngine  # noqa: E402
from r3rl.engine.base import use_shared_prefix  # noqa: E402
from r3rl.engine.half_matmul import cpu_has_fast_half  # noqa: E402
from r3rl.types import SamplingParams  # noqa: E402

SUFFIX_TOKENS = 20
# Qwen2.5 shapes (random weights): name -> config kwargs.
SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
}
WORKLOADS = {"countdown": (110, 130), "fc": (1030, 1070)}  # context length range in tokens


class IdsTokenizer:
    """The little of a tokenizer the engine touches, for random-id prompts of a big vocabulary."""

    pad_token_id = 0
    eos_token_id = None
    bos_token_id = None

    def batch_decode(self, seqs: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(map(str, s)) for s in seqs]


def build_model(name: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM

    if name == "tiny":
        from r3rl.demo import tiny

        tok = tiny.build_tokenizer()
        model = tiny.build_model(tok, hidden_size=64, layers=2)
    else:
        config = AutoConfig.for_model("qwen2", max_position_embeddings=32768, rope_theta=1e6,
                                      bos_token_id=None, eos_token_id=None, pad_token_id=0, **SHAPES[name])
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        tok = IdsTokenizer()
    model.generation_config.eos_token_id = None  # no early stop: both sides generate exactly R and T tokens
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(device=device, dtype=dtype).eval(), tok


@dataclass
class Workload:
    contexts: list[list[int]]
    suffix: list[int]
    group: int
    reflection_tokens: int
    retry_tokens: int

    @property
    def generated_tokens(self) -> int:
        return len(self.contexts) * self.group * (self.reflection_tokens + self.retry_tokens)


def make_workload(name: str, vocab: int, failures: int, group: int, r: int, t: int, seed: int = 0) -> Workload:
    g = torch.Generator().manual_seed(seed)
    low, high = WORKLOADS[name]
    lengths = torch.randint(low, high + 1, (failures,), generator=g).tolist()
    # Ids from 10 up: clear of the tiny tokenizer's special tokens and of pad id 0.
    contexts = [torch.randint(10, vocab, (n,), generator=g).tolist() for n in lengths]
    suffix = torch.randint(10, vocab, (SUFFIX_TOKENS,), generator=g).tolist()
    return Workload(contexts, suffix, group, r, t)


# ------------------------------------------------------------------ the two ways


def run_r3rl(model: torch.nn.Module, tok: Any, w: Workload) -> tuple[list[list[int]], list[list[int]]]:
    engine = HFEngine(model, tok, max_batch_size=64, stop_token_ids=[])
    retry = SamplingParams(max_new_tokens=w.retry_tokens, temperature=0.0)

    def then(i: int, j: int, depth: int, gen: Any) -> Continuation | None:
        return Continuation(retry, suffix_ids=w.suffix) if depth == 0 else None

    out = engine.generate(w.contexts, SamplingParams(max_new_tokens=w.reflection_tokens, temperature=0.0),
                          n=w.group, then=then)
    reflections = [g.token_ids for row in out for g in row]
    retries = [g.next.token_ids for row in out for g in row]
    return reflections, retries


def _hf_generate(model: torch.nn.Module, seqs: list[list[int]], new_tokens: int, pad: int) -> list[list[int]]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=model.device)  # [B, P]
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=model.device)  # [B, P]
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                         eos_token_id=None, pad_token_id=pad)
    return out[:, width:].tolist()


def run_baseline(model: torch.nn.Module, tok: Any, w: Workload) -> tuple[list[list[int]], list[list[int]]]:
    with torch.inference_mode():
        rows = [c for c in w.contexts for _ in range(w.group)]
        reflections = _hf_generate(model, rows, w.reflection_tokens, tok.pad_token_id)
        retry_prompts = [c + r + w.suffix for c, r in zip(rows, reflections)]
        retries = _hf_generate(model, retry_prompts, w.retry_tokens, tok.pad_token_id)
    return reflections, retries


# ------------------------------------------------------------- machine and cost


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of a big square matmul, best of `repeats`: the machine's practical compute ceiling.

    The best run, not the median: on a shared machine the ceiling is what the
    hardware can do, and load from other processes only ever lowers a reading.
    """
    # Without AMX / AVX512-BF16 CPU bfloat16 matmuls are several times slower than float32: a
    # smaller matrix keeps the measurement short (1024^3 is past the size where the rate levels off).
    n = 4096 if device.type == "cuda" else 2048 if dtype == torch.float32 else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(4 if device.type == "cuda" else 1):
            a @ b
        sync(device)
        times.append((time.perf_counter() - t0) / (4 if device.type == "cuda" else 1))
    return 2 * n**3 / min(times[1:])


def copy_bandwidth(device: torch.device, repeats: int = 10) -> float:
    """Bytes/s of a large tensor copy (read + write), best of `repeats`: the ceiling for memory-bound decoding."""
    x = torch.empty(64 * 2**20, device=device, dtype=torch.float32)  # 256 MiB
    y = torch.empty_like(x)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        y.copy_(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * x.numel() * x.element_size() / min(times[1:])


@dataclass
class CostModel:
    """FLOPs and bytes of one forward call, from the model's shape."""

    dense_params: int  # parameters of the matmuls run per token (embedding lookup excluded)
    head_params: int  # vocab x hidden: the LM head, run only where logits are kept
    weight_bytes: int
    layers: int
    q_width: int  # heads x head_dim
    kv_width: int  # kv_heads x head_dim
    elem: int  # bytes per element

    @classmethod
    def of(cls, model: torch.nn.Module) -> "CostModel":
        c = model.config
        emb = model.get_input_embeddings().weight
        total = sum(p.numel() for p in model.parameters())
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(
            dense_params=total - emb.numel(),
            head_params=emb.numel(),
            weight_bytes=total * emb.element_size(),
            layers=c.num_hidden_layers,
            q_width=c.num_attention_heads * head_dim,
            kv_width=c.num_key_value_heads * head_dim,
            elem=emb.element_size(),
        )

    def call(self, batch: int, q: int, kv_before: int, logit_rows: int) -> tuple[float, float]:
        """(FLOPs, bytes) of a forward over [batch, q] tokens with kv_before cached tokens."""
        kv_after = kv_before + q
        flops = 2.0 * self.dense_params * batch * q + 2.0 * self.head_params * logit_rows
        flops += 4.0 * self.layers * self.q_width * batch * q * kv_after  # QK^T and AV (mask not exploited)
        kv_bytes = 2.0 * self.layers * self.kv_width * self.elem * batch * kv_after
        return flops, self.weight_bytes + kv_bytes


@dataclass
class Tally:
    """Forward calls seen by a hook: tokens processed (padding included), FLOPs, roofline time."""

    cost: CostModel
    peak_flops: float
    bandwidth: float
    calls: int = 0
    tokens: int = 0
    flops: float = 0.0
    bound_s: float = 0.0
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    device: torch.device | None = None  # set: each forward is timed (synchronised), decode ones summed
    decode_flops: float = 0.0
    decode_s: float = 0.0
    _open: tuple[float, float, bool] | None = None

    def hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        batch, q = ids.shape
        step = kwargs.get("r3rl_step")
        if step is not None:  # r3rl's slot cache: the longest row attended to (its prefix entry included)
            kv_before = max(step.kv_len - q, 0) + (step.prefixes.kv_len if step.prefixes is not None else 0)
        else:
            cache = kwargs.get("past_key_values")
            try:
                kv_before = cache.get_seq_length() if cache is not None else 0
            except Exception:  # a paged cache (continuous batching) has no single length: count fed tokens only
                kv_before = 0
        keep = kwargs.get("logits_to_keep", 0)
        if isinstance(keep, torch.Tensor) and keep.numel() > 1:  # continuous batching: the kept indices
            logit_rows = batch * keep.numel()
        else:
            logit_rows = batch * (q if not keep else min(int(keep), q))
        flops, nbytes = self.cost.call(batch, q, kv_before, logit_rows)
        self.calls += 1
        self.tokens += batch * q
        self.flops += flops
        self.bound_s += max(flops / self.peak_flops, nbytes / self.bandwidth)
        if self.device is not None:
            sync(self.device)
            self._open = (time.perf_counter(), flops, q == 1)

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        """Post-hook: a one-token (decode) forward's FLOPs and wall time go to the decode tally."""
        if self._open is None:
            return
        sync(self.device)
        t0, flops, decode = self._open
        self._open = None
        if decode:
            self.decode_flops += flops
            self.decode_s += time.perf_counter() - t0


def timed(fn: Callable[[], Any], model: torch.nn.Module, tally: Tally, device: torch.device) -> tuple[float, Any]:
    handles = [model.register_forward_pre_hook(tally.hook, with_kwargs=True)]
    if tally.device is not None:
        handles.append(model.register_forward_hook(tally.after, with_kwargs=True))
    try:
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        return time.perf_counter() - t0, result
    finally:
        for h in handles:
            h.remove()


# -------------------------------------------------------------------------- main


def bench_workload(name: str, model: torch.nn.Module, tok: Any, args: argparse.Namespace, vocab: int,
                   peak: float, bw: float, device: torch.device) -> dict[str, Any]:
    w = make_workload(name, vocab, args.failures, args.group, args.reflection_tokens, args.retry_tokens)
    cost = CostModel.of(model)
    methods = {"r3rl": run_r3rl, "baseline": run_baseline}
    times: dict[str, list[float]] = {m: [] for m in methods}
    tallies: dict[str, Tally] = {}
    outputs: dict[str, Any] = {}
    for _ in range(args.repeats):
        for method, fn in methods.items():  # interleaved, so load from other processes hits both alike
            tallies[method] = Tally(cost, peak, bw)
            seconds, outputs[method] = timed(lambda: fn(model, tok, w), model, tallies[method], device)
            times[method].append(seconds)
    results = {m: dict(seconds=statistics.median(times[m]), all=times[m], tally=tallies[m]) for m in methods}
    same_refl = outputs["r3rl"][0] == outputs["baseline"][0]
    same_retry = outputs["r3rl"][1] == outputs["baseline"][1]
    mismatches = sum(a != b for a, b in zip(outputs["r3rl"][0] + outputs["r3rl"][1],
                                            outputs["baseline"][0] + outputs["baseline"][1]))
    print(f"\n== {name}: {args.failures} failures x G={args.group}, contexts "
          f"{min(map(len, w.contexts))}-{max(map(len, w.contexts))} tokens, "
          f"{args.reflection_tokens} reflection + {args.retry_tokens} retry tokens, "
          f"{w.generated_tokens} generated tokens per run, {args.repeats} repeats")
    print(f"   ceilings: matmul {peak / 1e9:.1f} GFLOP/s, copy {bw / 1e9:.1f} GB/s (best measured so far)")
    print(f"   identical greedy outputs: reflections {same_refl}, retries {same_retry} "
          f"({mismatches} of {2 * len(outputs['r3rl'][0])} sequences differ)")
    print(f"   {'method':9} {'median s':>9} {'gen tok/s':>10} {'fwd calls':>9} {'tokens in':>9} "
          f"{'GFLOP':>9} {'GFLOP/s':>8} {'%matmul':>8} {'%roofline':>9}   runs (s)")
    for method in ("r3rl", "baseline"):
        r = results[method]
        t: Tally = r["tally"]
        s = r["seconds"]
        print(f"   {method:9} {s:9.2f} {w.generated_tokens / s:10.1f} {t.calls:9d} {t.tokens:9d} "
              f"{t.flops / 1e9:9.1f} {t.flops / s / 1e9:8.1f} {100 * t.flops / s / peak:7.1f}% "
              f"{100 * t.bound_s / s:8.1f}%   {', '.join(f'{x:.2f}' for x in r['all'])}")
    speedup = results["baseline"]["seconds"] / results["r3rl"]["seconds"]
    print(f"   speed-up r3rl / baseline: {speedup:.2f}x")
    return dict(speedup=speedup, identical=same_refl and same_retry)


# ------------------------------------------------------------ realistic workload
#
# Reflections and retries sampled at temperature 1 (no top-k / top-p) with a stop set of
# 1/STOP_EVERY of the vocabulary: on these random models the next-token distribution is
# nearly flat, so each row stops after a geometric number of tokens (mean about
# STOP_EVERY, anywhere from 1 to the limit), like real reflections of very different
# lengths. The three methods draw different random numbers, so their outputs differ;
# their token counts follow the same distribution and speed is compared as generated
# tokens per second. Agreement is checked separately on a greedy run of the same shape.

STOP_EVERY = 40


def stop_set(vocab: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randperm(vocab - 10, generator=g)[: max(1, (vocab - 10) // STOP_EVERY)] + 10
    return sorted(ids.tolist())


def _params(tokens: int, sample: bool, seed: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=tokens, temperature=1.0 if sample else 0.0, top_k=0, top_p=1.0, seed=seed)


BATCH = {"rows": 64, "cpu_matmul": "auto"}  # r3rl's max_batch_size (--max-batch-size) and cpu_matmul in realistic mode
KV_BYTES: dict[str, int] = {}  # peak KV-cache bytes of the last r3rl run, by method


def real_r3rl(model, tok, w: Workload, stops: list[int], sample: bool, seed: int = 0, shared: bool = True):
    engine = HFEngine(model, tok, max_batch_size=BATCH["rows"], stop_token_ids=stops, shared_prefix_attention=shared,
                      cpu_matmul=BATCH["cpu_matmul"])
    retry = _params(w.retry_tokens, sample, seed)

    def then(i: int, j: int, depth: int, gen: Any) -> Continuation | None:
        return Continuation(retry, suffix_ids=w.suffix) if depth == 0 else None

    out = engine.generate(w.contexts, _params(w.reflection_tokens, sample, seed), n=w.group, then=then)
    KV_BYTES["r3rl" if shared else "r3rl-copies"] = engine.last_stats.get("kv_bytes", 0)
    return [g.token_ids for row in out for g in row], [g.next.token_ids for row in out for g in row]


def real_r3rl_copies(model, tok, w: Workload, stops: list[int], sample: bool, seed: int = 0):
    """r3rl with shared-prefix attention off: each row's slot holds its own copy of the prompt's KV."""
    return real_r3rl(model, tok, w, stops, sample, seed, shared=False)


def _cut(seq: list[int], stops: set[int]) -> list[int]:
    """A generate() row up to and including its first stop token (the rest is padding)."""
    return next((seq[: k + 1] for k, t in enumerate(seq) if t in stops), seq)


def real_naive(model, tok, w: Workload, stops: list[int], sample: bool, seed: int = 0):
    """model.generate per stage, 64 rows per call (r3rl's max_batch_size): rows that stop wait for the longest."""
    stop = set(stops)

    def stage(seqs: list[list[int]], new: int) -> list[list[int]]:
        out = []
        for k in range(0, len(seqs), 64):
            part = seqs[k: k + 64]
            width = max(map(len, part))
            ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in part], device=model.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in part], device=model.device)
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=sample, max_new_tokens=new,
                                 eos_token_id=stops, pad_token_id=tok.pad_token_id, top_k=None, top_p=None,
                                 temperature=1.0 if sample else None)
            out += [_cut(r, stop) for r in gen[:, width:].tolist()]
        return out

    torch.manual_seed(seed)
    with torch.inference_mode():
        rows = [c for c in w.contexts for _ in range(w.group)]
        reflections = stage(rows, w.reflection_tokens)
        retries = stage([c + r + w.suffix for c, r in zip(rows, reflections)], w.retry_tokens)
    return reflections, retries


def real_cb(model, tok, w: Workload, stops: list[int], sample: bool, seed: int = 0):
    """transformers' continuous batching (generate_batch, paged cache, prefix block sharing), one call per stage."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    def stage(seqs: list[list[int]], new: int) -> list[list[int]]:
        gc = GenerationConfig(do_sample=sample, max_new_tokens=new, eos_token_id=stops,
                              pad_token_id=tok.pad_token_id, top_k=0, top_p=1.0, temperature=1.0)
        page = 64
        blocks = sum(-(-(len(x) + new) // page) for x in seqs) + 16
        cbc = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=2048,
                                       max_requests_per_batch=64, allow_block_sharing=True, seed=seed)
        out = model.generate_batch(seqs, generation_config=gc, continuous_batching_config=cbc, progress_bar=False)
        if len(out) != len(seqs):
            raise RuntimeError(f"generate_batch returned {len(out)} of {len(seqs)} requests (see its log above)")
        if any(getattr(r, "error", None) for r in out.values()):
            raise RuntimeError("generate_batch failed on some requests (see its log above)")
        return [list(r.generated_tokens) for r in out.values()]

    # Not under inference_mode: the manager's worker thread updates tensors it created outside it.
    rows = [c for c in w.contexts for _ in range(w.group)]
    reflections = stage(rows, w.reflection_tokens)
    retries = stage([c + r + w.suffix for c, r in zip(rows, reflections)], w.retry_tokens)
    return reflections, retries


VLLM = {"python": "/work/vllm-venv/bin/python", "models": "/tmp/r3rl-bench-models", "eager": False}


def vllm_model_dir(model: torch.nn.Module, name: str) -> Path:
    """The bench model's weights in a folder vLLM's process can load, written once per shape and dtype.

    build_model is seeded, so a folder written by an earlier run holds the same weights.
    """
    dtype = str(model.dtype).removeprefix("torch.")
    path = Path(VLLM["models"]) / f"{name}-{dtype}"
    if not (path / "config.json").exists():
        model.save_pretrained(path)
    return path


def run_vllm(model: torch.nn.Module, name: str, w: Workload, small: Workload, stops: list[int],
             repeats: int) -> dict[str, Any]:
    """One vLLM process: start-up, the greedy slice, then `repeats` sampled runs (timed inside the worker)."""
    runs = [{"sample": False, "seed": 0, "slice": len(small.contexts), "group": small.group}]
    runs += [{"sample": True, "seed": rep} for rep in range(repeats)]
    job = dict(model=str(vllm_model_dir(model, name)), dtype=str(model.dtype).removeprefix("torch."),
               contexts=w.contexts, suffix=w.suffix, group=w.group, reflection_tokens=w.reflection_tokens,
               retry_tokens=w.retry_tokens, stops=stops, runs=runs, enforce_eager=VLLM["eager"],
               max_num_seqs=BATCH["rows"], threads=torch.get_num_threads(),
               max_model_len=max(map(len, w.contexts)) + w.reflection_tokens + w.retry_tokens + len(w.suffix) + 16)
    worker = Path(__file__).with_name("vllm_worker.py")
    with tempfile.TemporaryDirectory() as tmp:
        job_path, result_path, log_path = Path(tmp) / "job.json", Path(tmp) / "result.json", Path(tmp) / "log.txt"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        env.pop("PYTHONPATH", None)  # vLLM's environment, not r3rl's
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            rc = subprocess.run([VLLM["python"], str(worker), str(job_path), str(result_path)], env=env,
                                stdout=log, stderr=subprocess.STDOUT).returncode
        total = time.perf_counter() - t0
        if rc != 0:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"the vLLM worker ({VLLM['python']}) exited {rc}; the end of its log:\n{tail}")
        result = json.loads(result_path.read_text())
    result["process_s"] = total
    greedy, *sampled = result["runs"]
    return dict(startup_s=result["startup_s"], process_s=total, greedy=(greedy["reflections"], greedy["retries"]),
                runs=sampled)


REAL_METHODS = {"r3rl": real_r3rl, "r3rl-copies": real_r3rl_copies, "transformers-CB": real_cb,
                "naive": real_naive, "vllm": None}  # vllm: run_vllm, one process per workload and dtype


def bench_realistic(name: str, model, tok, args, peak: float, bw: float,
                    device: torch.device) -> tuple[bool, dict[str, Any]]:
    vocab = model.config.vocab_size
    w = make_workload(name, vocab, args.failures, args.group, args.reflection_tokens, args.retry_tokens)
    stops = stop_set(vocab)
    cost = CostModel.of(model)

    methods = {m: REAL_METHODS[m] for m in args.methods}
    # Agreement: greedy, stop set on, a slice of the workload (2 failures), every method.
    small = Workload(w.contexts[:2], w.suffix, min(w.group, 2), w.reflection_tokens, w.retry_tokens)
    vllm = run_vllm(model, args.model, w, small, stops, args.repeats) if "vllm" in methods else None
    greedy = {m: vllm["greedy"] if m == "vllm" else fn(model, tok, small, stops, False) for m, fn in methods.items()}
    agree = {m: sum(a == b for a, b in zip(greedy["r3rl"][0] + greedy["r3rl"][1], out[0] + out[1]))
             for m, out in greedy.items() if m != "r3rl"}
    total = 2 * len(greedy["r3rl"][0])

    times: dict[str, list[float]] = {m: [] for m in methods}
    toks: dict[str, list[int]] = {m: [] for m in methods}
    tallies: dict[str, Tally] = {}
    decode: dict[str, list[float]] = {m: [] for m in methods}  # FLOP/s of the decode forwards, per run
    lengths: list[int] = []
    for rep in range(args.repeats):
        for method, fn in methods.items():  # interleaved, so load from other processes hits all alike
            tallies[method] = Tally(cost, peak, bw, device=device if args.decode_timing else None)
            if method == "vllm":  # ran before the others, in its own process
                run = vllm["runs"][rep]
                times[method].append(run["seconds"])
                toks[method].append(sum(map(len, run["reflections"])) + sum(map(len, run["retries"])))
                continue
            seconds, (refl, retr) = timed(lambda: fn(model, tok, w, stops, True, rep), model, tallies[method], device)
            times[method].append(seconds)
            toks[method].append(sum(map(len, refl)) + sum(map(len, retr)))
            if tallies[method].decode_s:
                decode[method].append(tallies[method].decode_flops / tallies[method].decode_s)
            if method == "r3rl":
                lengths += [len(x) for x in refl]
    rate = {m: statistics.median(n / t for n, t in zip(toks[m], times[m])) for m in methods}
    lengths.sort()
    print(f"\n== realistic {name}: {args.failures} failures x G={args.group}, contexts "
          f"{min(map(len, w.contexts))}-{max(map(len, w.contexts))} tokens, sampled (T=1), stop set 1/{STOP_EVERY} "
          f"of the vocabulary, limits {w.reflection_tokens} reflection / {w.retry_tokens} retry tokens, "
          f"{args.repeats} repeats")
    print(f"   matmul ceiling used for the percentages: {peak / 1e9:.1f} GFLOP/s (best measured in this run)")
    print(f"   r3rl reflection lengths: min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
          f"max {lengths[-1]} (the {w.reflection_tokens} limit hit by "
          f"{sum(x >= w.reflection_tokens for x in lengths)} of {len(lengths)})")
    print("   greedy agreement with r3rl (2 failures, stop set on): "
          + ", ".join(f"{m} {k}/{total} sequences identical" for m, k in agree.items()))
    # What HFEngine's default ("auto") picks for this shape; the speed-ups are of that method.
    auto = "r3rl" if use_shared_prefix(None, w.contexts, w.group) or "r3rl-copies" not in methods else "r3rl-copies"
    print(f"   r3rl = shared-prefix attention on, r3rl-copies = off; the default (auto) picks {auto} here, "
          f"and 'auto x' is its speed over each method")
    print(f"   {'method':16} {'gen tok/s':>10} {'median s':>9} {'gen tokens':>10} {'fwd calls':>9} "
          f"{'tokens in':>9} {'%matmul':>8} {'decode %mm':>10} {'KV MiB':>7} {'auto x':>7}   runs (s)")
    for m in methods:
        t = tallies[m]
        s = statistics.median(times[m])
        dec = (f"{100 * statistics.median(decode[m]) / peak:9.1f}%" if decode[m] else f"{'-':>10}")
        kv = f"{KV_BYTES[m] / 2**20:7.1f}" if m in KV_BYTES else f"{'-':>7}"
        mm = f"{100 * t.flops / times[m][-1] / peak:7.1f}%" if t.calls else f"{'-':>8}"
        print(f"   {m:16} {rate[m]:10.1f} {s:9.2f} {statistics.median(toks[m]):10.0f} {t.calls:9d} {t.tokens:9d} "
              f"{mm} {dec} {kv} {rate[auto] / rate[m]:6.2f}x   "
              f"{', '.join(f'{x:.2f}' for x in times[m])}")
    if vllm is not None:
        print(f"   vllm start-up (import, load, {'eager' if VLLM['eager'] else 'compile'}, first request): "
              f"{vllm['startup_s']:.1f} s; its whole process {vllm['process_s']:.1f} s; runs not interleaved")
    info = dict(rate=rate, decode={m: statistics.median(d) for m, d in decode.items() if d},
                vllm_startup=vllm["startup_s"] if vllm is not None else None, agree=agree, total=total)
    # Identity is promised in float32 only: in bfloat16 the engines round differently (r3rl's float32
    # products, PyTorch's kernels in naive), so greedy rows may part at a near-tie (tests/test_bf16_engine.py
    # checks that every such parting is one); here the count is reported, not enforced.
    if next(model.parameters()).dtype != torch.float32:
        return True, info
    return all(k == total for m, k in agree.items() if m in ("naive", "r3rl-copies")), info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["tiny", "0.5b", "qwen2.5-1.5b"], default="tiny")
    p.add_argument("--workload", choices=["countdown", "fc", "all"], default="all")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], default=None,
                   help="realistic mode: run every method once per dtype, in this order, and end with a summary")
    p.add_argument("--failures", type=int, default=None, help="failures per batch (default 8 tiny, 2 others)")
    p.add_argument("--group", type=int, default=None, help="G: reflections per failure (default 8; 4 --fixed)")
    p.add_argument("--reflection-tokens", type=int, default=None, help="limit (default 96; 32 --fixed)")
    p.add_argument("--retry-tokens", type=int, default=None, help="limit (default 48; 16 --fixed)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 5 tiny, 3 others)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and failures: a smoke run")
    p.add_argument("--methods", nargs="+", choices=list(REAL_METHODS),
                   default=[m for m in REAL_METHODS if m != "vllm"],
                   help="realistic mode: which methods to run (r3rl always runs; vllm only when named)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="realistic mode: r3rl's max_batch_size (decode slots) and vLLM's max_num_seqs; "
                        "the other peers keep 64 rows per call")
    p.add_argument("--cpu-matmul", "--half-matmul", choices=CpuMatmul.values(), default="auto",
                   help="realistic mode: r3rl's generation.cpu_matmul (bfloat16 runs; auto = float32 products on CPUs without bf16 units)")
    p.add_argument("--decode-timing", action="store_true",
                   help="time every forward (synchronised) and report the decode forwards' FLOP/s as %% of matmul")
    p.add_argument("--vllm-python", default=VLLM["python"], help="the Python of vLLM's environment")
    p.add_argument("--vllm-models", default=VLLM["models"], help="where the random-weight models are saved for vLLM")
    p.add_argument("--vllm-eager", action="store_true",
                   help="vLLM with enforce_eager=True: no compilation at start-up, slower steps")
    p.add_argument("--fixed", action="store_true",
                   help="the old fixed-length workload (no stop tokens, r3rl vs naive only)")
    args = p.parse_args(argv)
    args.methods = ["r3rl"] + [m for m in args.methods if m != "r3rl"]
    BATCH["rows"] = args.max_batch_size
    BATCH["cpu_matmul"] = args.cpu_matmul
    VLLM.update(python=args.vllm_python, models=args.vllm_models, eager=args.vllm_eager)
    if args.fixed and "vllm" in args.methods:
        p.error("--fixed compares r3rl with naive generate only; the vllm method runs in realistic mode")

    fixed_defaults = dict(group=4, reflection_tokens=32, retry_tokens=16)
    real_defaults = dict(group=8, reflection_tokens=96, retry_tokens=48)
    for key, value in (fixed_defaults if args.fixed else real_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.failures is None:
        args.failures = (8 if args.model == "tiny" else 2) if args.fixed else 16
    if args.repeats is None:
        args.repeats = 5 if args.model == "tiny" else 3
    if args.quick:
        args.repeats = 1 if args.model != "tiny" else 2
        args.failures = min(args.failures, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ok = True
    summary: list[tuple[str, str, dict[str, Any], float, float]] = []
    for dtype_name in args.dtypes or [args.dtype]:
        good, rows = run_dtype(args, device, dtype_name)
        ok &= good
        summary += rows
    if args.dtypes and not args.fixed:
        print_summary(summary, args)
    if not ok:
        what = "the baseline" if args.fixed else "the naive baseline (or r3rl-copies)"
        print(f"\nFAIL: r3rl and {what} produced different greedy outputs", file=sys.stderr)
    return 0 if ok else 1


def run_dtype(args: argparse.Namespace, device: torch.device, dtype_name: str) -> tuple[bool, list]:
    """Every workload in one dtype; returns (agreement ok, summary rows of the realistic mode)."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    if device.type == "cpu" and dtype == torch.bfloat16:
        print("note: bfloat16 matmuls pay on CPUs with AMX or AVX512-BF16 (lscpu flags amx_bf16, avx512_bf16); "
              "elsewhere they are several times slower than float32", file=sys.stderr)

    t0 = time.perf_counter()
    model, tok = build_model(args.model, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\nmodel {args.model}: {n_params / 1e6:.1f}M parameters (random init), {dtype_name} on {device}; "
          f"built in {time.perf_counter() - t0:.1f}s")
    peak = matmul_peak(device, dtype)
    bw = copy_bandwidth(device)
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
          f"matmul {peak / 1e9:.1f} GFLOP/s ({dtype_name}), copy bandwidth {bw / 1e9:.1f} GB/s")

    # Warm-up (kernel selection, allocator): a short run of each method, untimed.
    warm = make_workload("countdown", model.config.vocab_size, 1, 2, 2, 2, seed=1)
    run_r3rl(model, tok, warm)
    run_baseline(model, tok, warm)

    names = ["countdown", "fc"] if args.workload == "all" else [args.workload]
    ok = True
    rows = []
    if not args.fixed:
        if "transformers-CB" in args.methods:
            real_cb(model, tok, warm, stop_set(model.config.vocab_size), False)
        for name in names:
            peak, bw = max(peak, matmul_peak(device, dtype)), max(bw, copy_bandwidth(device))
            bf16_peak = peak if dtype == torch.bfloat16 else matmul_peak(device, torch.bfloat16)
            # The ceiling of the dtype r3rl's linear layers multiply in: float32 for bf16 weights
            # under cpu_matmul float32, or auto on a CPU without bfloat16 units.
            upcast = dtype == torch.bfloat16 and device.type == "cpu" and (
                args.cpu_matmul == "float32" or (args.cpu_matmul == "auto" and not cpu_has_fast_half(dtype)))
            product_peak = matmul_peak(device, torch.float32) if upcast else peak
            good, info = bench_realistic(name, model, tok, args, peak, bw, device)
            ok &= good
            rows.append((dtype_name, name, info, peak, bf16_peak, product_peak, "float32" if upcast else dtype_name))
        return ok, rows
    for name in names:
        # Re-measured before each workload, keeping the best: one reading on a busy machine can be low.
        peak, bw = max(peak, matmul_peak(device, dtype)), max(bw, copy_bandwidth(device))
        ok &= bench_workload(name, model, tok, args, model.config.vocab_size, peak, bw, device)["identical"]
    return ok, rows


def print_summary(rows: list, args: argparse.Namespace) -> None:
    """One table over the dtypes: tok/s per method, r3rl / vllm, decode FLOP/s against both ceilings."""
    bf16_ceiling = max(r[4] for r in rows)
    print(f"\n== summary: {args.model}, {args.failures} x {args.group}, limits {args.reflection_tokens}/"
          f"{args.retry_tokens}, {torch.get_num_threads()} threads; bfloat16 matmul ceiling "
          f"{bf16_ceiling / 1e9:.1f} GFLOP/s (best measured in this run)")
    methods = [m for m in args.methods]
    print("| dtype | workload | " + " | ".join(f"{m} tok/s" for m in methods)
          + (" | r3rl / vllm | vllm start-up s" if "vllm" in methods else "")
          + " | r3rl decode GFLOP/s | % of own-dtype ceiling | % of bf16 ceiling | r3rl multiplies in"
          + " | % of that dtype's ceiling |")
    print("| --- | --- | " + " | ".join("---:" for _ in methods) + (" | ---: | ---:" if "vllm" in methods else "")
          + " | ---: | ---: | ---: | --- | ---: |")
    for dtype_name, name, info, peak, _, product_peak, product in rows:
        rate, dec = info["rate"], info["decode"].get("r3rl")
        cells = [f"{rate[m]:.1f}" for m in methods]
        if "vllm" in methods:
            cells += [f"{rate['r3rl'] / rate['vllm']:.2f}x", f"{info['vllm_startup']:.0f}"]
        cells += [f"{dec / 1e9:.1f}", f"{100 * dec / peak:.1f}%", f"{100 * dec / bf16_ceiling:.1f}%", product,
                  f"{100 * dec / product_peak:.1f}%"] if dec else ["-", "-", "-", product, "-"]
        print(f"| {dtype_name} | {name} | " + " | ".join(cells) + " |")
    by = {(r[0], r[1]): r[2]["rate"] for r in rows}
    for name in {r[1] for r in rows}:
        if ("float32", name) in by and ("bfloat16", name) in by:
            print(f"   {name}: bfloat16 / float32 speed: " + ", ".join(
                f"{m} {by['bfloat16', name][m] / by['float32', name][m]:.2f}x" for m in methods))


if __name__ == "__main__":
    raise SystemExit(main())
