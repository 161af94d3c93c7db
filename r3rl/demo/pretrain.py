"""Build the offline demo's starting model from scratch: tokenizer, Qwen2 model, supervised traces.

The shipped asset r3rl/demo/model was made with

    python -m r3rl.demo.pretrain --out r3rl/demo/model

on a shared 2-core CPU, one thread, float32, everything seeded. The model is pre-trained on
synthetic reflect/retry conversations (r3rl.demo.traces) so that it starts with
the behaviour the demo needs: sloppy first attempts, mostly useless reflections,
occasionally a correct column-by-column working that makes the retry pass. It is
a controlled miniature of the paper's mechanism, not a claim about natural models.

    python -m r3rl.demo.pretrain --check r3rl/demo/model

measures that behaviour on held-out problems with temperature-1 sampling and
prints it as JSON (the numbers in the asset's README.md come from here).

Choices: loss on assistant tokens only (content + end-of-turn), AdamW with
warm-up, constant, cosine decay (see lr_at), right-padded batches of similar length,
traces generated on the fly from the task's train split (a fresh draw of problems for every
`bucket_batches` batches; with 2 digits each train problem recurs, each time in a new trace).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from r3rl.demo.addition import AdditionTask
from r3rl.demo.traces import TraceConfig, render_trace, sample_trace, trace_corpus
from r3rl.environment import prompts
from r3rl.evaluation.stats import wilson_interval

# The opening words of a working-style reflection (no generic reflection starts with "Let me").
FORCED_PREFIX = "Let me add"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines the demo model; logged into the model card."""

    digits: int = 2
    """Operand digits of the addition task the model is trained on."""
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    vocab_size: int = 1000
    """Upper bound for BPE training; the trace corpus saturates well below it."""
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.3
    """Share of the steps, at the end, over which the lr decays (cosine)."""
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1
    """Intra-op threads. 1 on purpose: on a CPU shared with other jobs, OpenMP's barriers make
    2 threads measurably slower than 1 (2.7-4.2k vs 0.8-1.9k tokens/s on this model)."""
    tokenizer_corpus: int = 3000
    """Number of trace texts the tokenizer's merges are learned from."""
    bucket_batches: int = 16
    """Traces are drawn this many batches at a time and sorted by length, to cut padding."""


# ---------------------------------------------------------------------- building
def build_tokenizer_and_model(cfg: PretrainConfig, traces: TraceConfig, task: AdditionTask):
    from r3rl.demo.tiny import build_model, build_tokenizer

    corpus = trace_corpus(task, cfg.tokenizer_corpus, seed=cfg.seed, cfg=traces)
    tok = build_tokenizer(vocab_size=cfg.vocab_size, extra_corpus=corpus)
    model = build_model(tok, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
                        kv_heads=cfg.kv_heads, intermediate_size=cfg.intermediate_size, seed=cfg.seed)
    return tok, model


def batches(task: AdditionTask, tok, cfg: PretrainConfig, traces: TraceConfig):
    """Yield (input_ids [B, T], labels [B, T], attention_mask [B, T]) forever, deterministically."""
    rng = random.Random(f"traces/{cfg.seed}")
    chunk = cfg.batch_size * cfg.bucket_batches
    round_ = 0
    while True:
        examples = task.load_examples("train", n=chunk, seed=cfg.seed * 1_000_003 + round_)
        round_ += 1
        rendered = [render_trace(tok, sample_trace(task, ex, rng, traces)) for ex in examples]
        rendered.sort(key=lambda r: len(r[0]))
        groups = [rendered[i:i + cfg.batch_size] for i in range(0, len(rendered), cfg.batch_size)]
        rng.shuffle(groups)
        for group in groups:
            width = max(len(ids) for ids, _ in group)
            input_ids = torch.full((len(group), width), tok.pad_token_id, dtype=torch.long)  # [B, T]
            labels = torch.full((len(group), width), -100, dtype=torch.long)  # [B, T]
            attn = torch.zeros((len(group), width), dtype=torch.long)  # [B, T]
            for row, (ids, mask) in enumerate(group):
                t = torch.tensor(ids)  # [L]
                input_ids[row, :len(ids)] = t
                labels[row, :len(ids)] = torch.where(torch.tensor(mask, dtype=torch.bool), t, -100)
                attn[row, :len(ids)] = 1
            yield input_ids, labels, attn


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Warm-up, stable, decay: linear warm-up, constant lr, then cosine to min_lr_ratio * lr.

    The long constant phase is deliberate: the digit look-ups that the working
    needs are learned in a sudden transition several hundred steps in, and a
    cosine schedule that starts decaying at once had already cut the lr by half
    when it began (measured on an earlier 1000-step run).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(cfg.steps * (1 - cfg.decay_fraction))
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start) / max(1, cfg.steps - decay_start)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(out: Path, cfg: PretrainConfig, traces: TraceConfig, log_every: int = 50) -> dict[str, Any]:
    """Pre-train from scratch and save to `out`; returns training statistics."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task = AdditionTask(digits=cfg.digits)
    tok, model = build_tokenizer_and_model(cfg, traces, task)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tok)}, parameters {n_params:,}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    model.train()
    data = batches(task, tok, cfg, traces)
    t0, tokens, loss_sum, loss_n = time.time(), 0, 0.0, 0
    history: list[dict[str, float]] = []
    for step in range(cfg.steps):
        input_ids, labels, attn = next(data)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss  # mean over target tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        tokens += int(attn.sum())
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.time() - t0
            row = {"step": step + 1, "loss": loss_sum / loss_n, "lr": lr_at(step, cfg),
                   "elapsed_s": round(elapsed, 1), "tokens_per_s": round(tokens / elapsed)}
            history.append(row)
            print(json.dumps(row), flush=True)
            loss_sum, loss_n = 0.0, 0
        if (step + 1) % 500 == 0:
            save(out, model, tok)  # a usable model survives an interrupted run
    model.eval()
    save(out, model, tok)
    return {"parameters": n_params, "vocab": len(tok), "train_seconds": round(time.time() - t0, 1),
            "final_loss": history[-1]["loss"] if history else float("nan"), "history": history}


def save(out: Path, model, tok) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)


# ------------------------------------------------------------------------ checking
@torch.no_grad()
def generate_texts(model, tok, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float,
                   batch_size: int = 100) -> list[str]:
    """Sample (temperature > 0, no top-k/top-p) or decode greedily; returns the new text of each prompt."""
    out: list[str] = []
    for i in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[i:i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)  # [B, P] left-padded
        attn = torch.zeros_like(ids)  # [B, P]
        for row, p in enumerate(chunk):
            ids[row, width - len(p):] = torch.tensor(p)
            attn[row, width - len(p):] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} \
            if temperature > 0 else {"do_sample": False}
        gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **sampling)  # [B, P+N]
        out += tok.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"rate": round(k / n, 3) if n else None, "k": k, "n": n, "ci95": [round(x, 3) for x in wilson_interval(k, n)]}


def working_is_correct(example: dict[str, Any], reflection: str) -> bool:
    """A working-style reflection is correct when it ends with the true sum."""
    return reflection.rstrip().endswith(f"The sum is {int(example['a']) + int(example['b'])}.")


def check(folder: Path, digits: int, n: int = 400, seed: int = 1234, threads: int = 1) -> dict[str, Any]:
    """Measure the starting behaviour on n held-out problems (temperature 1, plus a forced greedy probe)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    task = AdditionTask(digits=digits)
    examples = task.load_examples("test", n=n, seed=seed)
    torch.manual_seed(seed)
    enc = lambda msgs: prompts.encode(tok, msgs)  # noqa: E731

    firsts = generate_texts(model, tok, [enc(task.messages(ex)) for ex in examples], 16, 1.0)
    ok1 = [task.verify(ex, a).ok for ex, a in zip(examples, firsts)]
    fail = [i for i, ok in enumerate(ok1) if not ok]
    convs = {i: task.messages(examples[i]) + [{"role": "assistant", "content": firsts[i]}] for i in fail}

    reflect_convs = [convs[i] + [{"role": "user", "content": prompts.DEFAULT_REFLECT}] for i in fail]
    reflections = generate_texts(model, tok, [enc(c) for c in reflect_convs], 96, 1.0)
    retry_convs = [c + [{"role": "assistant", "content": r}, {"role": "user", "content": prompts.DEFAULT_RETRY}]
                   for c, r in zip(reflect_convs, reflections)]
    retries = generate_texts(model, tok, [enc(c) for c in retry_convs], 16, 1.0)
    ok2 = [task.verify(examples[i], r).ok for i, r in zip(fail, retries)]
    working = [r.startswith(FORCED_PREFIX) for r in reflections]

    control_convs = [convs[i] + [{"role": "user", "content": prompts.DEFAULT_RETRY_NO_REFLECTION}] for i in fail]
    controls = generate_texts(model, tok, [enc(c) for c in control_convs], 16, 1.0)
    ok_control = [task.verify(examples[i], r).ok for i, r in zip(fail, controls)]

    # Forced probe: the skill behind the working style, with the style chosen for the model.
    forced_prompts = [enc(c) + tok(FORCED_PREFIX, add_special_tokens=False)["input_ids"] for c in reflect_convs]
    forced = [FORCED_PREFIX + t for t in generate_texts(model, tok, forced_prompts, 96, 0.0)]
    forced_ok = [working_is_correct(examples[i], r) for i, r in zip(fail, forced)]

    n_fail, n_working, k1 = len(fail), sum(working), sum(ok1)
    w_right = [working_is_correct(examples[i], r) for i, r, w in zip(fail, reflections, working) if w]
    return {
        "n": n, "seed": seed, "digits": digits,
        "first_attempt_acc": _rate(k1, n),
        "working_share_given_fail": _rate(n_working, n_fail),
        "working_arithmetic_acc": _rate(sum(w_right), n_working),
        "retry_acc_after_working": _rate(sum(ok for ok, w in zip(ok2, working) if w), n_working),
        "retry_acc_after_generic": _rate(sum(ok for ok, w in zip(ok2, working) if not w), n_fail - n_working),
        "retry_acc_no_reflection": _rate(sum(ok_control), n_fail),
        "acc_at_2": _rate(k1 + sum(ok2), n),
        "acc_at_2_no_reflection": _rate(k1 + sum(ok_control), n),
        "forced_working_greedy_arithmetic_acc": _rate(sum(forced_ok), n_fail),
        "examples": [{"problem": task.prompt(examples[i]), "attempt": firsts[i], "reflection": reflections[j],
                      "retry": retries[j]} for j, i in enumerate(fail[:6])],
    }


# ---------------------------------------------------------------------- model card
def write_model_card(out: Path, cfg: PretrainConfig, traces: TraceConfig, stats: dict[str, Any],
                     metrics: dict[str, Any], command: str) -> None:
    def row(name: str, key: str) -> str:
        m = metrics[key]
        rate = "n/a" if m["rate"] is None else f"{m['rate']:.3f}"
        return f"| {name} | {rate} | {m['k']}/{m['n']} | [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}] |"

    lines = [
        "# r3rl demo model",
        "",
        "A tiny Qwen2 causal LM with a byte-level BPE tokenizer and a ChatML chat template, made",
        "from scratch offline for `r3rl demo`. It adds integers and answers inside `<answer></answer>` tags.",
        "",
        "**What it is.** A controlled miniature of the mechanism in *Reflect, Retry, Reward*",
        "(Bensal et al. 2025): its starting behaviour was instilled by supervised pre-training on",
        "synthetic conversations that follow r3rl's own protocol (`r3rl.demo.traces`). Its first",
        "attempts are sloppy; after a failure it usually writes a generic, useless reflection and",
        "sometimes a correct column-by-column working, which makes the retry pass. GRPO on the",
        "reflection tokens can raise the share of working reflections. This says nothing about",
        "how natural language models reflect.",
        "",
        "## How it was made",
        "",
        "```",
        command,
        "```",
        "",
        f"Task: `addition` with `digits={cfg.digits}`, prompts from `AdditionTask.prompt`, reflect/retry",
        "instructions exactly `r3rl.environment.prompts.DEFAULT_REFLECT`, `DEFAULT_RETRY`, `DEFAULT_RETRY_NO_REFLECTION`,",
        "no system prompt. Loss on assistant tokens only (content + `<|im_end|>`). Trained on the task's",
        "train split only; the numbers below are on its disjoint test split.",
        "",
        f"- architecture: Qwen2, hidden {cfg.hidden_size}, {cfg.layers} layers, {cfg.heads} heads "
        f"({cfg.kv_heads} KV), MLP {cfg.intermediate_size}, tied embeddings, vocab {stats['vocab']}, "
        f"{stats['parameters']:,} parameters, float32",
        f"- optimisation: AdamW (lr {cfg.lr}, betas 0.9/0.98, weight decay {cfg.weight_decay}), "
        f"{cfg.warmup_steps} warm-up steps, constant, cosine to {cfg.min_lr_ratio} x lr over the last "
        f"{cfg.decay_fraction:.0%} of {cfg.steps} steps of "
        f"{cfg.batch_size} conversations, grad clip {cfg.grad_clip}, seed {cfg.seed}",
        f"- trace mix: {json.dumps(asdict(traces))}",
        f"- training time: {stats['train_seconds']:.0f} s on {cfg.threads} CPU thread(s) of a shared 2-core "
        f"machine; final loss {stats['final_loss']:.4f}",
        "",
        "Trace kinds (`r3rl.demo.traces`): `first` (a lone first attempt, right with probability",
        "`p_correct`, else a dropped carry or a digit off by one); protocol traces that stop after a",
        "correct first attempt, or go on with a reflection (working with probability `p_working`, else",
        "one of 8 generic paraphrases) and a retry (the working's sum, or another sloppy answer), or",
        "with a retry-without-reflection control; `skill` traces (a working reflection whose opening",
        "sentence and failed attempt carry no loss, so they teach the arithmetic without moving the",
        "style's prior); `drill` traces (\"Add a and b column by column.\" -> working), short and",
        "dense in arithmetic. The working restates the operands before the columns; without that, and",
        "without drills, earlier runs of this script learned almost no correct working in the same time.",
        "Operands have 2 digits because 3-digit working was not learned within the CPU budget.",
        "",
        f"## Measured behaviour (test split, n = {metrics['n']} problems, temperature 1.0, seed {metrics['seed']})",
        "",
        "Measured with `python -m r3rl.demo.pretrain --check <folder>`. Retry rates are over failed first",
        "attempts (problems the model already got wrong once); 95% Wilson",
        "intervals. The forced row appends 'Let me add' to the reflection prompt and decodes greedily:",
        "the skill a reinforced working style can draw on.",
        "",
        "| quantity | rate | k/n | 95% CI |",
        "| --- | --- | --- | --- |",
        row("first-attempt accuracy", "first_attempt_acc"),
        row("P(working-style reflection given a failed attempt)", "working_share_given_fail"),
        row("working reflections with correct arithmetic", "working_arithmetic_acc"),
        row("retry accuracy after a working reflection", "retry_acc_after_working"),
        row("retry accuracy after a generic reflection", "retry_acc_after_generic"),
        row("retry accuracy without reflection (control)", "retry_acc_no_reflection"),
        row("acc@2 with reflection", "acc_at_2"),
        row("acc@2 without reflection (control)", "acc_at_2_no_reflection"),
        row("forced working (prefix 'Let me add', greedy): correct arithmetic", "forced_working_greedy_arithmetic_acc"),
        "",
        "## Sample episodes (failed first attempts, temperature 1.0)",
        "",
    ]
    for ex in metrics["examples"]:
        lines += [f"- {ex['problem']}  ", f"  attempt: `{ex['attempt']}`  ", f"  reflection: {ex['reflection']}  ",
                  f"  retry: `{ex['retry']}`"]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m r3rl.demo.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="folder to write the model to")
    p.add_argument("--check", type=Path, metavar="FOLDER", help="only measure the behaviour of a saved model")
    p.add_argument("--n-check", type=int, default=400, help="held-out problems for the behaviour check")
    for f in PretrainConfig.__dataclass_fields__.values():
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    cfg = PretrainConfig(**{k: getattr(args, k) for k in PretrainConfig.__dataclass_fields__})
    if args.check is not None:
        metrics = check(args.check, cfg.digits, n=args.n_check, threads=cfg.threads)
        print(json.dumps(metrics, indent=1))
        return 0
    if args.out is None:
        p.error("give --out FOLDER to train, or --check FOLDER to measure")
    traces = TraceConfig()
    stats = train(args.out, cfg, traces)
    metrics = check(args.out, cfg.digits, n=args.n_check, threads=cfg.threads)
    print(json.dumps(metrics, indent=1), flush=True)
    command = "python -m r3rl.demo.pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
    write_model_card(args.out, cfg, traces, stats, metrics, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
