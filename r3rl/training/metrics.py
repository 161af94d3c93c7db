"""One row of metrics.jsonl per optimizer step: the schema the trainer writes and the report reads.

The trainer adds up what each micro-batch contributes (sums over episodes and reflection
tokens, and one maximum; `SUM_KEYS`, `MAX_KEYS`), combines the ranks' totals, and
`MetricsRow.from_totals` turns them into the logged means. metrics.jsonl holds `MetricsRow.to_json()`;
the report (reporting/document.py) and trackers read it back with `MetricsRow.from_json`, which
accepts the rows of older runs: a missing field is None, an unknown key is kept in `extra`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from r3rl.config import field_docs

EVAL_PREFIX = "eval/"

# What a micro-batch adds to its step's totals (sums), and the one maximum.
SUM_KEYS = ("loss", "episodes", "reward", "retry_ok", "zero_adv", "kl_tokens", "tokens", "reflection_len",
            "gen_tokens", "clip_tokens", "diff_tokens", "diff_sum")
MAX_KEYS = ("diff_max",)


@dataclass
class MetricsRow:
    """One optimizer step. Every field has one definition for any number of processes: counts, sums and
    maxima are over every rank's micro-batches (the ranks' totals are reduced before the means), and the
    figures of the step's reflections over all ranks' reflections (gathered, in group order), so the same
    seed gives the same row on 1 and N processes up to float rounding (tests/test_rank_agreement.py).
    Only the timing fields (step_time, tokens_per_s, the `*_s` and `time_*` fields) depend on the machine.
    Means over episodes are over all of the step's reflections (batch_size x G,
    every rank); token means are over the reflection tokens that entered the loss. With another
    train.objective (training/objectives.py) read "the objective's samples and trained tokens":
    reward is that objective's (first_attempt: the attempt passed), and reflection_len is 0 for
    first_attempt, which generates no reflection."""

    step: int
    """Optimizer steps done (1 = after the first)."""
    loss: float | None = None
    """Policy loss of the step, summed over micro-batches and ranks with the one global normalisation (so it is
    one process's value whatever the number of ranks; GRPO's is ~1e-8: zero-mean advantages and ratio 1; its gradient is not)."""
    reward_mean: float | None = None
    """Mean reward of the step's reflections (the retry passed)."""
    retry_success: float | None = None
    """Share of the step's retries that passed."""
    zero_adv_frac: float | None = None
    """Share of reflections in groups with equal rewards (advantage 0, no policy gradient)."""
    kl: float | None = None
    """Mean k3 KL estimate to the reference model per reflection token (0 when train.beta = 0: not computed)."""
    clip_frac: float | None = None
    """Share of reflection tokens whose PPO ratio was clipped."""
    reflection_len: float | None = None
    """Mean reflection length in tokens."""
    episodes: int | None = None
    """Reflections rolled out in the step (batch_size x G, fewer online when attempts pass)."""
    lr: float | None = None
    """Learning rate after the step's scheduler step."""
    grad_norm: float | None = None
    """Norm of the step's all-reduced gradient (the same on every rank) before clipping (None when train.max_grad_norm = 0)."""
    tokens_per_s: float | None = None
    """A global rate: the generated tokens (attempts, reflections and retries) of every rank's rollouts in the
    step, divided by the step's rollout wall time on the slowest rank (timing: depends on the machine)."""
    step_time: float | None = None
    """Wall seconds of the step on the main process, rollouts to the step's logs (the ranks wait for each other
    at the agreement points and the gradient all-reduce, so every rank's step is about this long; timing)."""
    verifier_errors: int | None = None
    """Verifier exceptions so far, over all processes (scored as failures)."""
    logprob_diff_mean: float | None = None
    """Mean |training log-prob - sampling log-prob| per reflection token, before the step's update
    (the engine's kernels against the training forward; None when they are not comparable)."""
    logprob_diff_max: float | None = None
    """Largest |training log-prob - sampling log-prob| of one reflection token in the step."""
    reflection_distinct_1: float | None = None
    """Distinct word 1-grams / all 1-grams over the step's reflections (r3rl/evaluation/diagnostics.py)."""
    reflection_distinct_2: float | None = None
    """Distinct word bigrams / all bigrams over the step's reflections: falls when the policy collapses onto a template."""
    reflection_distinct_3: float | None = None
    """Distinct word trigrams / all trigrams over the step's reflections."""
    reflection_duplicate_share: float | None = None
    """Share of the step's reflections that copy another one exactly (after lower-casing and collapsing spaces)."""
    reflection_repeated_share: float | None = None
    """Share of the step's reflections whose text occurs more than once (copies and originals)."""
    reflection_len_p50: float | None = None
    """Median reflection length in tokens."""
    reflection_len_p90: float | None = None
    """90th percentile (nearest rank) of reflection length in tokens."""
    reflection_len_max: float | None = None
    """Longest reflection of the step in tokens."""
    reflection_repeated_retry_success: float | None = None
    """Retry success after the step's repeated reflections (None when none repeated)."""
    reflection_unique_retry_success: float | None = None
    """Retry success after the step's unique reflections (None when all repeated)."""
    reflection_most_repeated: list[dict[str, Any]] | None = None
    """The step's most repeated reflections: [{"text", "count"}, ...] (not sent to trackers: not a number)."""
    weight_sync_s: float | None = None
    """Seconds the main process spent pushing the policy's weights into its generation engine after the step (each
    rank pushes into its own; vLLM; None when the engine generates with the policy object itself, or no sync was due)."""
    time_generation_s: float | None = None
    """Seconds of the step's rollouts (generation and verification), on the main process (each rank times its own work; the row is the main process's)."""
    time_policy_s: float | None = None
    """Seconds of the step's policy forwards and backwards (old log-probs included), on the main process (each rank times its own work; the row is the main process's)."""
    time_reference_s: float | None = None
    """Seconds of the step's reference-model forwards (0 when train.beta = 0), on the main process (each rank times its own work; the row is the main process's)."""
    time_optimizer_s: float | None = None
    """Seconds of the step's gradient clipping and optimizer updates, on the main process (each rank times its own work; the row is the main process's)."""
    eval: dict[str, float] = field(default_factory=dict)
    """Periodic evaluation of the step ("acc@1", "acc@2"), written as "eval/acc@1", ...; empty when none ran.
    Every rank evaluates its share of the fixed, seeded chunks and all receive the same results."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of an older (or newer) metrics.jsonl that are not fields here, kept as read."""

    @classmethod
    def from_totals(cls, step: int, t: dict[str, float], *, processes: int, lr: float, grad_norm: float | None,
                    gen_time: float, step_time: float, verifier_errors: int,
                    diff_comparable: bool) -> "MetricsRow":
        n_eps, n_tok = max(t["episodes"], 1.0), max(t["tokens"], 1.0)
        diffs = diff_comparable and t["diff_tokens"] > 0
        return cls(
            step=step,
            loss=t["loss"] / processes,  # each rank's loss is scaled by W (gradients are averaged)
            reward_mean=t["reward"] / n_eps,
            retry_success=t["retry_ok"] / n_eps,
            zero_adv_frac=t["zero_adv"] / n_eps,
            kl=t["kl_tokens"] / n_tok,
            clip_frac=t["clip_tokens"] / n_tok,
            reflection_len=t["reflection_len"] / n_eps,
            episodes=int(t["episodes"]),
            lr=lr,
            grad_norm=grad_norm,
            tokens_per_s=t["gen_tokens"] / max(gen_time, 1e-9),
            step_time=step_time,
            verifier_errors=verifier_errors,
            logprob_diff_mean=t["diff_sum"] / t["diff_tokens"] if diffs else None,
            logprob_diff_max=t["diff_max"] if diffs else None,
        )

    def add_diagnostics(self, diag: dict[str, Any]) -> None:
        """Fill the reflection_* fields from `reflection_diagnostics(...)` of the step's reflections."""
        length = diag.get("length") or {}
        success = diag.get("retry_success") or {}
        self.reflection_distinct_1 = diag.get("distinct_1")
        self.reflection_distinct_2 = diag.get("distinct_2")
        self.reflection_distinct_3 = diag.get("distinct_3")
        self.reflection_duplicate_share = diag.get("duplicate_share")
        self.reflection_repeated_share = diag.get("repeated_share")
        self.reflection_len_p50 = length.get("median")
        self.reflection_len_p90 = length.get("p90")
        self.reflection_len_max = length.get("max")
        self.reflection_repeated_retry_success = (success.get("repeated") or {}).get("rate")
        self.reflection_unique_retry_success = (success.get("unique") or {}).get("rate")
        self.reflection_most_repeated = [{"text": r["text"], "count": r["count"]} for r in diag.get("most_repeated") or []]

    def to_json(self) -> dict[str, Any]:
        """The metrics.jsonl line: the fields in order, eval results as "eval/<name>", then extra keys."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("eval", "extra")}
        row.update({EVAL_PREFIX + k: v for k, v in self.eval.items()})
        return row | {k: v for k, v in self.extra.items() if k not in row}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "MetricsRow":
        """A metrics.jsonl line of any r3rl version: missing fields are None, unknown keys go to `extra`."""
        names = {f.name for f in fields(cls)} - {"eval", "extra"}
        known = {k: v for k, v in row.items() if k in names}
        evals = {k[len(EVAL_PREFIX):]: v for k, v in row.items() if k.startswith(EVAL_PREFIX)}
        extra = {k: v for k, v in row.items() if k not in names and not k.startswith(EVAL_PREFIX)}
        return cls(**known, eval=evals, extra=extra)

    def numbers(self) -> dict[str, float]:
        """The numeric values (for trackers, which take numbers only; None = not measured is left out)."""
        return {k: v for k, v in self.to_json().items() if isinstance(v, (int, float))}


def column(name: str) -> str:
    """`name` when it is a column that MetricsRow writes (a field or "eval/<name>"), else KeyError:
    a reader that names a column the trainer does not write fails at once instead of plotting nothing."""
    if name.startswith(EVAL_PREFIX) or name in _DOCS:
        return name
    raise KeyError(f"{name!r} is not a metrics.jsonl column (see r3rl/training/metrics.py MetricsRow)")


def doc(name: str) -> str:
    """The meaning of a MetricsRow column: its field docstring."""
    return _DOCS[column(name)]


_DOCS = {k: " ".join(v.split()) for k, v in field_docs(MetricsRow).items() if k not in ("eval", "extra")}
