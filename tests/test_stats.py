"""Paired tests and clustered intervals against values worked out by hand (r3rl.evaluation.stats)."""

from __future__ import annotations

import math

import pytest

from r3rl.evaluation import stats
from r3rl.evaluation.stats import (
    MCNEMAR,
    MCNEMAR_CLUSTERED,
    NEWCOMBE,
    WILSON,
    cluster_bootstrap_interval,
    clustered_proportion,
    mcnemar_exact,
    newcombe_paired_interval,
    paired_comparison,
    sign_flip_exact,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        # n = 8 discordant pairs, min = 1: 2 * (C(8,0) + C(8,1)) / 2^8 = 2 * 9 / 256
        (7, 1, 0.0703125),
        (1, 7, 0.0703125),
        # n = 12, min = 2: 2 * (1 + 12 + 66) / 4096
        (10, 2, 158 / 4096),
        # all discordant pairs one way: 2 / 2^n
        (0, 10, 2 / 1024),
        (5, 0, 2 / 32),
        # balanced: the doubled tail exceeds 1 and is capped
        (3, 3, 1.0),
        (0, 0, 1.0),
        # n = 3, min = 1: 2 * (1 + 3) / 8 = 1.0
        (2, 1, 1.0),
    ],
)
def test_mcnemar_exact_by_hand(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == p  # exact integer arithmetic: no tolerance


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


@pytest.mark.parametrize(
    ("diffs", "p"),
    [
        # magnitudes 2, 1, 1: sums over the 8 sign choices are 4, 2, 2, 0, 0, -2, -2, -4; observed 2
        ([2, 1, -1], 6 / 8),
        # only the two same-sign choices reach |sum| >= 6 out of 16
        ([3, 1, 1, 1], 2 / 16),
        # the report fixture's before/after: eight examples +1, one +2, one 0 -> all 9 same sign
        ([1] * 8 + [2, 0], 2 / 512),
        ([2, 2], 2 / 4),
        ([0, 0, 0], 1.0),
        ([], 1.0),
    ],
)
def test_sign_flip_exact_by_hand(diffs: list[int], p: float) -> None:
    assert sign_flip_exact(diffs) == pytest.approx(p, abs=1e-12)


@pytest.mark.parametrize(("b", "c"), [(7, 1), (0, 10), (4, 4), (13, 5), (0, 1), (25, 11)])
def test_sign_flip_with_one_pair_per_example_is_mcnemar(b: int, c: int) -> None:
    diffs = [-1] * b + [1] * c + [0] * 9  # concordant examples add nothing
    assert sign_flip_exact(diffs) == pytest.approx(mcnemar_exact(b, c), abs=1e-12)


def test_newcombe_matches_the_published_example() -> None:
    # Cavo et al. (2012) complete response before/after consolidation therapy, as worked in
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables, ch. 8:
    # table [[59, 6], [16, 80]] -> estimate -0.0621, 95% CI -0.1186 to -0.0046 for first - second.
    lo, hi = newcombe_paired_interval(both=59, first_only=6, second_only=16, neither=80)
    assert (lo, hi) == pytest.approx((0.0046, 0.1186), abs=5e-5)  # second - first: signs flip


def test_newcombe_with_no_discordant_pair_by_hand() -> None:
    # 5 both, 5 neither: p1 = p2 = 0.5, Wilson(5, 10) = 0.5 -+ w with w = 0.263407;
    # phi = (5*5 - 0 - 10/2) / sqrt(5^4) = 0.8, so the half-width is w * sqrt(2 - 2*0.8) = 0.166593.
    w = 0.5 - wilson_interval(5, 10)[0]
    assert w == pytest.approx(0.263407, abs=1e-6)
    lo, hi = newcombe_paired_interval(5, 0, 0, 5)
    assert (lo, hi) == pytest.approx((-0.166593, 0.166593), abs=1e-6)


def test_cluster_bootstrap_is_exact_when_every_example_agrees() -> None:
    # every example has the same ratio 1/2, so every resample does too
    assert cluster_bootstrap_interval([1, 2, 3], [2, 4, 6]) == (0.5, 0.5)
    # examples with no trials carry nothing
    assert cluster_bootstrap_interval([1, 0, 1], [2, 0, 2]) == (0.5, 0.5)
    assert cluster_bootstrap_interval([0], [0]) == (0.0, 1.0)


def test_cluster_bootstrap_is_seeded_and_widens_for_correlated_samples() -> None:
    # 20 examples x 4 samples, each example all-pass or all-fail: the information is that of
    # 20 trials, not 80. Normal approximation over examples: half-width 1.96 * sqrt(0.25 / 20) = 0.219.
    hits, sizes = [4] * 10 + [0] * 10, [4] * 20
    lo, hi = cluster_bootstrap_interval(hits, sizes)
    assert (lo, hi) == cluster_bootstrap_interval(hits, sizes)  # same seed, same interval
    assert (lo, hi) != cluster_bootstrap_interval(hits, sizes, seed=1)
    assert lo < 0.5 < hi
    assert (hi - lo) / 2 == pytest.approx(0.219, rel=0.15)
    w_lo, w_hi = wilson_interval(40, 80)  # what treating the 80 trials as independent gives
    assert hi - lo > 1.7 * (w_hi - w_lo)


def test_clustered_proportion_picks_wilson_or_bootstrap() -> None:
    single = [(f"ex{i}", i < 3) for i in range(10)]
    value, ci, method = clustered_proportion(single)
    assert (value, ci, method) == (0.3, wilson_interval(3, 10), WILSON)
    several = [(f"ex{i // 4}", i // 4 < 5) for i in range(40)]  # 10 examples x 4, all-or-nothing
    value, ci, method = clustered_proportion(several)
    assert value == 0.5 and method == stats.bootstrap_name()
    assert ci[1] - ci[0] > 1.7 * (wilson_interval(20, 40)[1] - wilson_interval(20, 40)[0])


def test_paired_comparison_one_trial_per_example() -> None:
    # 20 trials: 8 pass under both, 7 under the first only, 1 under the second only, 4 under neither
    pattern = [(1, 1)] * 8 + [(1, 0)] * 7 + [(0, 1)] * 1 + [(0, 0)] * 4
    cmp = paired_comparison([(f"ex{i}", a, b) for i, (a, b) in enumerate(pattern)])
    assert (cmp.pairs, cmp.examples, cmp.first_only, cmp.second_only) == (20, 20, 7, 1)
    assert cmp.first_rate == 15 / 20 and cmp.second_rate == 9 / 20
    assert cmp.difference == pytest.approx(-6 / 20)
    assert cmp.p_value == 0.0703125 and cmp.test == MCNEMAR
    assert cmp.difference_ci == newcombe_paired_interval(8, 7, 1, 4) and cmp.interval == NEWCOMBE
    assert cmp.difference_ci[0] < cmp.difference < cmp.difference_ci[1]
    assert cmp.to_json()["difference_ci"] == list(cmp.difference_ci)


def test_paired_comparison_clusters_several_trials_per_example() -> None:
    # The report fixture's before/after acc@2 pattern: 10 examples x 2 samples; per example the
    # (after-only minus before-only) counts are eight 1s, one 2 and one 0, none the other way.
    per_example = [[(0, 1), (1, 1)]] * 8 + [[(0, 1), (0, 1)], [(0, 0), (0, 0)]]
    pairs = [(f"ex{k}", a, b) for k, trials in enumerate(per_example) for a, b in trials]
    cmp = paired_comparison(pairs)
    assert (cmp.pairs, cmp.examples, cmp.first_only, cmp.second_only) == (20, 10, 0, 10)
    assert cmp.test == MCNEMAR_CLUSTERED and cmp.interval == stats.bootstrap_name()
    assert cmp.p_value == pytest.approx(2 / 512, abs=1e-12)  # not McNemar's 2 / 1024 on 20 independent pairs
    assert cmp.difference == 0.5
    lo, hi = cmp.difference_ci
    # per-example halves d/2 are 0.5 (x8), 1 and 0: sd sqrt(0.05), so the half-width is about
    # 1.96 * sqrt(0.05 / 10) = 0.139 around +0.5, and no resample comes near 0
    assert 0.0 < lo < 0.5 < hi
    assert (hi - lo) / 2 == pytest.approx(0.139, rel=0.2)


def test_paired_comparison_needs_pairs() -> None:
    with pytest.raises(ValueError, match="at least one pair"):
        paired_comparison([])


def test_no_interval_overlap_test_is_offered() -> None:
    # Comparisons are paired tests now; an overlap check invites the unpaired reading.
    assert not hasattr(stats, "intervals_overlap")
    assert math.isclose(stats.Z95, 1.959963984540054)
