"""What training prints: one compact line per logged step and one per periodic evaluation.

The lines stay in the terminal (and in a redirected log) above the progress bar, as TRL's logging
does; metrics.jsonl holds every field, these are the few a researcher watches.
"""

from __future__ import annotations

from r3rl.training.metrics import MetricsRow

# Seconds by phase, in the order a step runs them (fields a row may not have: older runs, other engines).
PHASES = (("gen", "time_generation_s"), ("policy", "time_policy_s"), ("ref", "time_reference_s"),
          ("opt", "time_optimizer_s"), ("sync", "weight_sync_s"))


def step_line(row: MetricsRow, steps: int, kl: bool = True) -> str:
    """"step 3/20  reward 0.438  retry 0.438  zero-adv 0.25  kl 1.2e-04  refl 42 tok  5.0s (gen 3.1s ...)  412 tok/s".

    kl=False leaves out the KL, which is not computed (logged as 0) when train.beta = 0."""
    parts = [f"step {row.step}/{steps}"]
    for label, value, spec in (("reward", row.reward_mean, ".3f"), ("retry", row.retry_success, ".3f"),
                               ("zero-adv", row.zero_adv_frac, ".2f"), ("kl", row.kl if kl else None, ".1e")):
        if value is not None:
            parts.append(f"{label} {value:{spec}}")
    if row.reflection_len is not None:
        parts.append(f"refl {row.reflection_len:.0f} tok")
    phases = [f"{label} {v:.1f}s" for label, name in PHASES if (v := getattr(row, name, None)) is not None]
    if row.step_time is not None:
        parts.append(f"{row.step_time:.1f}s" + (f" ({' '.join(phases)})" if phases else ""))
    elif phases:
        parts.append(" ".join(phases))
    if row.tokens_per_s is not None:
        parts.append(f"{row.tokens_per_s:.0f} tok/s")
    return "  ".join(parts)


def eval_line(row: MetricsRow, steps: int) -> str | None:
    """"eval step 10/20: acc@1 0.350  acc@2 0.450" for a step that ran the periodic evaluation, else None."""
    if not row.eval:
        return None
    return f"eval step {row.step}/{steps}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.eval.items())
