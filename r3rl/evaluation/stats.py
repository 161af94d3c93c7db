"""Intervals and paired tests for pass/fail trials (pure functions on counts; numpy, no torch).

Evaluation trials are pass/fail outcomes, grouped by example: `eval.samples_per_example`
samples of one example are correlated (an easy example passes in all of them), so they
are not independent trials. The rules here follow from that:

- One trial per example: a Wilson score interval for an accuracy; for a paired
  comparison (before vs after training, acc@2 vs the no-reflection control: same
  examples, same seeds) the exact McNemar test and Newcombe's paired score interval
  for the difference.
- Several trials per example: a percentile bootstrap over examples (whole examples
  are resampled, their trials together) for accuracies and paired differences, and the
  McNemar test in its clustered exact form: a sign-flip test over examples, which is
  the exact McNemar test again when every example has one trial.

Comparing two accuracies by whether their intervals overlap is not a test of a paired
difference (it ignores the pairing and is badly conservative); nothing here does it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # standard normal 97.5% quantile
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

WILSON = "Wilson score interval"
NEWCOMBE = "Newcombe's paired score interval"
MCNEMAR = "exact McNemar test (two-sided)"
MCNEMAR_CLUSTERED = "exact McNemar test clustered by example (two-sided sign-flip test over examples)"


def bootstrap_name(resamples: int = BOOTSTRAP_RESAMPLES) -> str:
    return f"percentile bootstrap over examples, {resamples} resamples"


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and behaves at 0 or n
    successes, which is common for first-try accuracy of small models.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts b and c.

    Under no difference each of the n = b + c discordant pairs falls either way with
    probability 1/2: p = min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(n, 1/2).
    Computed in exact integer arithmetic; no pair discordant gives p = 1.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def sign_flip_exact(diffs: Iterable[int]) -> float:
    """Exact two-sided p-value of the sign-flip test of integer per-example differences.

    diffs[k] = (pairs of example k where only the second condition passed) - (pairs
    where only the first passed). Under no difference the two conditions are
    exchangeable within an example, so each diffs[k] is as likely to carry either
    sign; p = P(|sum of +-diffs[k]| >= |sum diffs|) over all 2^K sign choices. The
    distribution is built exactly by convolving, per distinct magnitude m held by n_m
    examples, the binomial law of m * (2 * Binomial(n_m, 1/2) - n_m). With one pair per
    example (diffs in {-1, 0, 1}) this is the exact McNemar test.
    """
    values = [int(d) for d in diffs]
    observed = abs(sum(values))
    counts: dict[int, int] = {}
    for d in values:
        if d:
            counts[abs(d)] = counts.get(abs(d), 0) + 1
    if not counts:
        return 1.0
    # pmf[i] is P(sum = i - offset); sums move in steps of 1 on a grid of width 2 * total + 1.
    pmf = np.ones(1)
    offset = 0
    for m, n_m in sorted(counts.items()):
        weights = np.array([math.comb(n_m, j) / 2**n_m for j in range(n_m + 1)])
        spread = np.zeros(2 * m * n_m + 1)  # values m * (2j - n_m), j = 0..n_m
        spread[:: 2 * m] = weights
        pmf = np.convolve(pmf, spread)
        offset += m * n_m
    sums = np.arange(len(pmf)) - offset
    return float(min(1.0, pmf[np.abs(sums) >= observed].sum()))


def newcombe_paired_interval(
    both: int, first_only: int, second_only: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's (1998) square-and-add score interval for p_second - p_first on paired trials.

    Each trial is scored under two conditions: `both` passed under both, `first_only`
    under the first only, `second_only` under the second only, `neither` under none.
    The Wilson limits of the two marginal proportions are combined with the estimated
    correlation phi between them (with Newcombe's continuity adjustment of phi), which
    keeps the interval inside [-1, 1] and sensible at 0 discordant pairs.
    """
    counts = (both, first_only, second_only, neither)
    if min(counts) < 0:
        raise ValueError(f"paired counts must be >= 0, got {counts}")
    n = sum(counts)
    if n == 0:
        return (-1.0, 1.0)
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson_interval(both + first_only, n, z)
    l2, u2 = wilson_interval(both + second_only, n, z)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    phi = 0.0
    if margins:
        a = both * neither - first_only * second_only
        phi = (a - n / 2) / math.sqrt(margins) if a > n / 2 else (a / math.sqrt(margins) if a < 0 else 0.0)
    diff = p2 - p1
    lower = diff - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = diff + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return (max(-1.0, lower), min(1.0, upper))


def cluster_bootstrap_interval(
    numerators: Sequence[float],
    denominators: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators) over clusters.

    One entry per example (its hits and its trials, or its paired difference and its
    pairs); whole examples are resampled with replacement, so the correlation of an
    example's samples is kept. Examples with no trials (denominator 0) carry nothing and
    are left out. Seeded: the same records give the same interval.
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators")
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    keep = den > 0
    num, den = num[keep], den[keep]
    k = len(num)
    if k == 0:
        return (0.0, 1.0)
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    chunk = max(1, 2_000_000 // k)  # bound the index matrix to ~16 MB
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        idx = rng.integers(0, k, size=(rows, k))  # [rows, k]
        ratios[start : start + rows] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def clustered_proportion(
    trials: Iterable[tuple[Hashable, bool]], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, tuple[float, float], str]:
    """(proportion, 95% interval, method) of pass/fail trials keyed by their example.

    Wilson when no example has more than one trial, else the bootstrap over examples.
    """
    hits: dict[Hashable, int] = {}
    sizes: dict[Hashable, int] = {}
    for key, ok in trials:
        hits[key] = hits.get(key, 0) + bool(ok)
        sizes[key] = sizes.get(key, 0) + 1
    k, n = sum(hits.values()), sum(sizes.values())
    value = k / n if n else 0.0
    if all(s == 1 for s in sizes.values()):
        return value, wilson_interval(k, n), WILSON
    ci = cluster_bootstrap_interval(list(hits.values()), list(sizes.values()), resamples=resamples, seed=seed)
    return value, ci, bootstrap_name(resamples)


@dataclass(frozen=True)
class PairedComparison:
    """Two conditions scored on the same trials: the second minus the first."""

    pairs: int
    examples: int
    first_rate: float
    second_rate: float
    first_only: int  # trials that passed under the first condition only (McNemar's b)
    second_only: int  # trials that passed under the second condition only (McNemar's c)
    difference: float  # second_rate - first_rate
    difference_ci: tuple[float, float]
    p_value: float
    test: str
    interval: str

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["difference_ci"] = list(self.difference_ci)
        return out


def paired_comparison(
    pairs: Iterable[tuple[Hashable, bool, bool]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedComparison:
    """Compare two conditions on paired trials given as (example key, first_ok, second_ok).

    One trial per example: exact McNemar test and Newcombe's interval. Several: the
    clustered exact McNemar (sign-flip over examples) and a bootstrap over examples.
    """
    rows = [(key, bool(a), bool(b)) for key, a, b in pairs]
    if not rows:
        raise ValueError("a paired comparison needs at least one pair")
    per_example: dict[Hashable, list[int]] = {}  # key -> [pairs, first_only, second_only]
    for key, a, b in rows:
        cell = per_example.setdefault(key, [0, 0, 0])
        cell[0] += 1
        cell[1] += a and not b
        cell[2] += b and not a
    n = len(rows)
    both = sum(a and b for _, a, b in rows)
    first_only = sum(c[1] for c in per_example.values())
    second_only = sum(c[2] for c in per_example.values())
    neither = n - both - first_only - second_only
    if all(c[0] == 1 for c in per_example.values()):
        p, ci, test, interval = (
            mcnemar_exact(first_only, second_only),
            newcombe_paired_interval(both, first_only, second_only, neither),
            MCNEMAR, NEWCOMBE,
        )
    else:
        diffs = [c[2] - c[1] for c in per_example.values()]
        sizes = [c[0] for c in per_example.values()]
        p = sign_flip_exact(diffs)
        ci = cluster_bootstrap_interval(diffs, sizes, resamples=resamples, seed=seed)
        test, interval = MCNEMAR_CLUSTERED, bootstrap_name(resamples)
    return PairedComparison(
        pairs=n,
        examples=len(per_example),
        first_rate=(both + first_only) / n,
        second_rate=(both + second_only) / n,
        first_only=first_only,
        second_only=second_only,
        difference=(second_only - first_only) / n,
        difference_ci=ci,
        p_value=p,
        test=test,
        interval=interval,
    )
