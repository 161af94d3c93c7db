"""GRPO maths checked against numbers worked out by hand (r3rl/grpo.py).

Every expected value below is derived in the comment next to it; none is produced
by running the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from r3rl.demo import tiny
from r3rl.training import grpo, logprobs
from r3rl.training.grpo import AdvantageMode, LossAggregation

# ----------------------------------------------------------------------------- advantages

SQRT_THIRD = math.sqrt(1 / 3)  # sample std of {1, 0, 0, 1} and of {1, 0, 0}: both have variance 1/3


def test_advantages_normalized_by_hand_sample_std():
    # mean 0.5, deviations +-0.5, sum of squares 1.0, sample variance 1.0 / (4 - 1) = 1/3.
    # A = +-0.5 / (sqrt(1/3) + 1e-4) = +-0.865875...  (population std 0.5 would give +-0.9998).
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0]))
    a = 0.5 / (SQRT_THIRD + 1e-4)
    assert a == pytest.approx(0.8658753, abs=1e-6)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a]), rtol=0, atol=1e-6)


def test_advantages_eps_is_used():
    # Same group with eps = 0.5: 0.5 / (0.57735 + 0.5) = 0.464102...
    adv = grpo.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([1, 1, 1, 1]), eps=0.5)
    assert adv[0].item() == pytest.approx(0.5 / (SQRT_THIRD + 0.5), abs=1e-6)
    assert adv[0].item() == pytest.approx(0.4641016, abs=1e-6)


def test_advantages_several_groups_noncontiguous_ids():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 1.0, 0.0, 1.0])
    groups = torch.tensor([7, 7, 7, 3, 3, 9, 42, 42])
    # group 7: mean 1/3, deviations (2/3, -1/3, -1/3), sum sq 6/9, sample var (6/9)/2 = 1/3.
    s = SQRT_THIRD + 1e-4
    # group 3: all equal -> 0. group 9: one member -> 0.
    # group 42: {0, 1}: mean 0.5, sum sq 0.5, sample var 0.5 / 1 = 0.5, std 0.70711 -> +-0.5 / (0.70711 + 1e-4).
    t = 0.5 / (math.sqrt(0.5) + 1e-4)
    expected = torch.tensor([(2 / 3) / s, -(1 / 3) / s, -(1 / 3) / s, 0.0, 0.0, 0.0, -t, t])
    assert expected[0].item() == pytest.approx(1.1545004, abs=1e-6)
    assert t == pytest.approx(0.7070068, abs=1e-6)
    adv = grpo.group_advantages(rewards, groups, AdvantageMode.NORMALIZED)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_advantages_mean_only():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 1.0])
    groups = torch.tensor([7, 7, 7, 3, 3, 9])
    adv = grpo.group_advantages(rewards, groups, "mean_only")  # the config string maps to MEAN_ONLY
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", list(AdvantageMode))
def test_all_equal_groups_are_exactly_zero_never_nan(mode):
    # 0.1 * 3 / 3 = 0.10000000000000002 in float64: r - mean is -1.4e-17, not 0, and dividing
    # by (std 0 + eps) would leave a nonzero advantage on pure noise. It must be exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 0.0, 0.0, 0.7], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    assert (rewards[:3].sum() / 3).item() != 0.1  # the residue this test is about really exists
    adv = grpo.group_advantages(rewards, groups, mode, eps=0.0)  # eps=0: a 0/0 would be NaN
    assert adv.dtype == torch.float64
    assert not torch.isnan(adv).any()
    assert (adv == 0).all()
    assert grpo.zero_signal_mask(rewards, groups).tolist() == [True] * 8


def test_zero_signal_mask_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.3, 0.0, 0.0])
    groups = torch.tensor([5, 5, 2, 2, 8, 1, 1])
    # group 5 mixed, group 2 all ones, group 8 single, group 1 all zeros.
    assert grpo.zero_signal_mask(rewards, groups).tolist() == [False, False, True, True, True, True, True]


def test_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        grpo.group_advantages(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(TypeError):
        grpo.group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError):
        grpo.group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0]))


# ----------------------------------------------------------------------------- policy loss

# Two sequences, clip_eps 0.2 (range [0.8, 1.2]); padded to T = 4 (column 0 is a context token).
#   seq 0: A = +1, ratios (1.1, 1.5):  losses -min(1.1, 1.1) = -1.1;  -min(1.5, 1.2) = -1.2 (clipped)
#          token mean -1.15
#   seq 1: A = -2, ratios (0.5, 1.5, 1.0):
#          -min(-1.0, 0.8 * -2 = -1.6) = 1.6 (clipped: rho below range and A < 0)
#          -min(-3.0, 1.2 * -2 = -2.4) = 3.0 (NOT clipped: rho above range but A < 0)
#          -min(-2.0, -2.0) = 2.0
#          token mean 6.6 / 3 = 2.2
#   SEQUENCE_MEAN: (-1.15 + 2.2) / 2 = 0.525
#   TOKEN_SUM, constant 8: (-1.1 - 1.2 + 1.6 + 3.0 + 2.0) / 8 = 4.3 / 8 = 0.5375
#   clip_frac 2 / 5 = 0.4, ratio_mean (1.1 + 1.5 + 0.5 + 1.5 + 1.0) / 5 = 1.12
RATIOS = [[1.0, 1.1, 1.5, 1.0], [1.0, 0.5, 1.5, 1.0]]
MASK = [[0, 1, 1, 0], [0, 1, 1, 1]]
ADV = [1.0, -2.0]


def _hand_batch():
    mask = torch.tensor(MASK)  # [2, 4]
    logp_old = torch.full((2, 4), -1.0, dtype=torch.float64)  # [2, 4]
    logp_old[0, 3] = -1000.0  # garbage at a padding position: exp(logp - logp_old) would be inf
    logp = (torch.full((2, 4), -1.0, dtype=torch.float64) + torch.tensor(RATIOS, dtype=torch.float64).log())
    logp = logp.requires_grad_()  # [2, 4]
    return logp, logp_old, torch.tensor(ADV, dtype=torch.float64), mask


def test_policy_loss_sequence_mean_by_hand():
    logp, logp_old, adv, mask = _hand_batch()
    loss, stats = grpo.policy_loss(logp, logp_old, adv, mask)
    assert loss.item() == pytest.approx(0.525, abs=1e-12)
    assert stats["clip_frac"] == pytest.approx(0.4, abs=1e-12)
    assert stats["ratio_mean"] == pytest.approx(1.12, abs=1e-12)
    assert stats["kl"] == 0.0 and stats["num_tokens"] == 5.0
    assert all(isinstance(v, float) for v in stats.values())


def test_policy_loss_token_sum_by_hand():
    logp, logp_old, adv, mask = _hand_batch()
    loss, _ = grpo.policy_loss(logp, logp_old, adv, mask, aggregation=LossAggregation.TOKEN_SUM, norm_constant=8)
    assert loss.item() == pytest.approx(0.5375, abs=1e-12)
    with pytest.raises(ValueError, match="norm_constant"):
        grpo.policy_loss(logp, logp_old, adv, mask, aggregation="token_sum")


def test_policy_loss_gradient_by_hand():
    # d(-rho A)/dlogp = -rho A (d rho / d logp = rho); 0 where the clipped branch is the min.
    # SEQUENCE_MEAN scales token t of sequence i by 1 / (len_i * B).
    #   seq 0 tok 1: -1.1 * 1 / (2 * 2) = -0.275      seq 0 tok 2: clipped -> 0
    #   seq 1 tok 1: clipped -> 0                       seq 1 tok 2: -1.5 * -2 / (3 * 2) = 0.5
    #   seq 1 tok 3: -1.0 * -2 / 6 = 0.33333            context / padding: 0
    logp, logp_old, adv, mask = _hand_batch()
    loss, _ = grpo.policy_loss(logp, logp_old, adv, mask)
    loss.backward()
    expected = torch.tensor([[0.0, -0.275, 0.0, 0.0], [0.0, 0.0, 0.5, 1 / 3]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)
    assert torch.isfinite(logp.grad).all()


def test_policy_loss_token_sum_gradient_by_hand():
    # TOKEN_SUM with constant 8 scales every token by 1/8: -1.1/8, 0, 0, 3/8, 2/8.
    logp, logp_old, adv, mask = _hand_batch()
    loss, _ = grpo.policy_loss(logp, logp_old, adv, mask, aggregation="token_sum", norm_constant=8)
    loss.backward()
    expected = torch.tensor([[0.0, -0.1375, 0.0, 0.0], [0.0, 0.0, 0.375, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


def test_policy_loss_clip_higher():
    # clip_eps_high 0.6 (range [0.8, 1.6]): seq 0 tok 2 (rho 1.5, A > 0) is no longer clipped:
    # seq 0 mean (-1.1 - 1.5) / 2 = -1.3; loss (-1.3 + 2.2) / 2 = 0.45; clip_frac 1 / 5.
    logp, logp_old, adv, mask = _hand_batch()
    loss, stats = grpo.policy_loss(logp, logp_old, adv, mask, clip_eps_high=0.6)
    assert loss.item() == pytest.approx(0.45, abs=1e-12)
    assert stats["clip_frac"] == pytest.approx(0.2, abs=1e-12)


def test_kl_k3_by_hand():
    # rho = 1 and A = 0: the policy term and its gradient vanish; only beta * k3 is left.
    # d = ref - logp = (ln 2, -ln 2, 0): k3 = e^d - d - 1 = (1 - ln 2, ln 2 - 0.5, 0) = (0.306853, 0.193147, 0)
    # mean over 3 tokens: 0.5 / 3 = 0.166667; loss = beta * 0.166667 = 0.083333 with beta = 0.5.
    # d k3 / d logp = 1 - e^d = (-1, 0.5, 0); times beta / 3: (-1/6, 1/12, 0).
    logp = torch.tensor([[-3.0, -1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    ref = logp.detach() + torch.tensor([[0.0, math.log(2), -math.log(2), 0.0]], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1]])
    loss, stats = grpo.policy_loss(logp, logp.detach(), torch.tensor([0.0], dtype=torch.float64), mask,
                                   beta=0.5, logp_ref=ref)
    assert 1 - math.log(2) == pytest.approx(0.3068528, abs=1e-7)
    assert stats["kl"] == pytest.approx(0.5 / 3, abs=1e-12)
    assert loss.item() == pytest.approx(0.5 * 0.5 / 3, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1 / 6, 1 / 12, 0.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_kl_is_logged_without_entering_the_loss_when_beta_is_zero():
    logp = torch.tensor([[0.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[0.0, -1.0 + math.log(2)]], dtype=torch.float64)
    loss, stats = grpo.policy_loss(logp, logp, torch.tensor([0.0], dtype=torch.float64), torch.tensor([[0, 1]]),
                                   beta=0.0, logp_ref=ref)
    assert loss.item() == 0.0
    assert stats["kl"] == pytest.approx(1 - math.log(2), abs=1e-12)
    with pytest.raises(ValueError, match="logp_ref"):
        grpo.policy_loss(logp, logp, torch.tensor([0.0]), torch.tensor([[0, 1]]), beta=0.1)


def test_single_token_reflections():
    # Each reflection is one token (an immediate end-of-turn), rho = 1, A = (0.5, -1.5):
    # per-token losses (-0.5, 1.5). SEQUENCE_MEAN: (-0.5 + 1.5) / 2 = 0.5. TOKEN_SUM / 10: 1.0 / 10 = 0.1.
    logp = torch.tensor([[0.0, -2.0], [0.0, -0.3]], requires_grad=True)
    mask = torch.tensor([[0, 1], [0, 1]])
    adv = torch.tensor([0.5, -1.5])
    loss, _ = grpo.policy_loss(logp, logp.detach(), adv, mask)
    assert loss.item() == pytest.approx(0.5, abs=1e-7)
    loss_ts, _ = grpo.policy_loss(logp, logp.detach(), adv, mask, aggregation="token_sum", norm_constant=10)
    assert loss_ts.item() == pytest.approx(0.1, abs=1e-7)
    loss.backward()  # d/dlogp = -A / 2 = (-0.25, 0.75)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.25], [0.0, 0.75]]), rtol=0, atol=1e-7)


def test_micro_batches_sum_to_full_batch_by_hand():
    # seq 0 alone with the full batch's 2 sequences: -1.15 / 2 = -0.575; seq 1 alone: 2.2 / 2 = 1.1.
    # Sum 0.525 = the full-batch loss. Without the normaliser each half would be divided by 1.
    logp, logp_old, adv, mask = _hand_batch()
    first, _ = grpo.policy_loss(logp[:1], logp_old[:1], adv[:1], mask[:1], norm_constant=2)
    second, _ = grpo.policy_loss(logp[1:], logp_old[1:], adv[1:], mask[1:], norm_constant=2)
    assert first.item() == pytest.approx(-0.575, abs=1e-12)
    assert second.item() == pytest.approx(1.1, abs=1e-12)
    assert (first + second).item() == pytest.approx(0.525, abs=1e-12)


@pytest.mark.parametrize("aggregation", list(LossAggregation))
def test_micro_batches_sum_to_full_batch_random(aggregation):
    gen = torch.Generator().manual_seed(0)
    bsz, seq_len = 6, 9
    lengths = torch.tensor([1, 8, 3, 5, 2, 7])
    mask = (torch.arange(seq_len)[None, :] >= seq_len - lengths[:, None]).long()  # [6, 9]
    logp_old = -torch.rand(bsz, seq_len, generator=gen, dtype=torch.float64) * 3  # [6, 9]
    logp = (logp_old + 0.4 * torch.randn(bsz, seq_len, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = logp_old + 0.2 * torch.randn(bsz, seq_len, generator=gen, dtype=torch.float64)  # [6, 9]
    adv = torch.randn(bsz, generator=gen, dtype=torch.float64)  # [6]
    kwargs = dict(beta=0.05, clip_eps=0.2, aggregation=aggregation)
    const = 8 * bsz if aggregation is LossAggregation.TOKEN_SUM else None

    full, _ = grpo.policy_loss(logp, logp_old, adv, mask, logp_ref=ref, norm_constant=const, **kwargs)
    (g_full,) = torch.autograd.grad(full, logp)
    const = const if const is not None else bsz
    parts = [grpo.policy_loss(logp[s], logp_old[s], adv[s], mask[s], logp_ref=ref[s], norm_constant=const, **kwargs)[0]
             for s in (slice(0, 2), slice(2, 6))]
    (g_parts,) = torch.autograd.grad(parts[0] + parts[1], logp)
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_parts, g_full, rtol=0, atol=1e-12)
    assert abs(full.item()) > 1e-3  # a vanishing loss would make the comparison empty


def test_truncated_importance_sampling_loss_by_hand():
    """TIS (train.sampling_correction=tis): w = min(exp(old - sampling), cap) multiplies each token's policy
    term. One sequence, A = 1, ratio 1 (old = logp), tokens at t = 1, 2:
      w_1 = exp(-1.0 - -1.5) = e^0.5 = 1.648721 (under the cap), w_2 = min(exp(-2.0 - -4.0) = e^2, 2) = 2 (capped);
      loss = -(w_1 + w_2) / 2 = -1.824361; d loss / d logp_t = -w_t / 2 = -0.824361, -1.0."""
    logp = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    sampling = torch.tensor([[0.0, -1.5, -4.0]])
    mask = torch.tensor([[0, 1, 1]])
    w = grpo.truncated_is_weights(logp.detach(), sampling, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.648721, 2.0]]))
    loss, _ = grpo.policy_loss(logp, logp.detach(), torch.tensor([1.0]), mask, is_weights=w)
    assert float(loss.detach()) == pytest.approx(-1.824361, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.824361, -1.0]]))
    # the KL term is not weighted: with beta > 0 it adds beta * mean_t k3 whatever w is
    ref = torch.tensor([[0.0, -1.5, -2.0]])  # k3 at t = 1: e^-0.5 + 0.5 - 1 = 0.106531; at t = 2: 0
    weighted, _ = grpo.policy_loss(logp.detach(), logp.detach(), torch.tensor([1.0]), mask, beta=0.5, logp_ref=ref, is_weights=w)
    assert float(weighted) == pytest.approx(-1.824361 + 0.5 * 0.106531 / 2, abs=1e-6)


def test_logprob_mismatch_by_hand():
    old = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 9.0]])
    sampling = torch.tensor([[5.0, -1.5, -1.0], [0.0, -0.25, 0.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])  # off-mask garbage (5.0, 9.0) is ignored
    got = grpo.logprob_mismatch(old, sampling, mask)
    assert got == pytest.approx({"diff_sum": 0.5 + 1.0 + 0.25, "diff_max": 1.0, "diff_tokens": 3.0})
    assert grpo.logprob_mismatch(old, sampling, torch.zeros_like(mask)) == {"diff_sum": 0.0, "diff_max": 0.0, "diff_tokens": 0.0}


def test_policy_loss_shape_errors():
    with pytest.raises(ValueError):
        grpo.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError):
        grpo.policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))


# ----------------------------------------------------------------------------- batching


def test_build_completion_batch_by_hand():
    ids, am, cm = grpo.build_completion_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert am.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert cm.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    with pytest.raises(ValueError):
        grpo.build_completion_batch([[]], [[1]], pad_id=0)
    with pytest.raises(ValueError):
        grpo.build_completion_batch([[1]], [[]], pad_id=0)


def test_completion_values_places_sampling_logprobs():
    _, _, cm = grpo.build_completion_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    out = grpo.completion_values([[-0.5, -1.5], [-1.0, -2.0, -3.0]], cm)
    assert out.tolist() == [[0, 0, 0, -0.5, -1.5], [0, -1.0, -2.0, -3.0, 0]]
    with pytest.raises(ValueError):
        grpo.completion_values([[-0.5], [-1.0, -2.0, -3.0]], cm)


# ----------------------------------------------------------------------------- log-probs on a tiny model


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model(tok, hidden_size=32, layers=2)


CONTEXTS = [[11, 12, 13, 14, 15, 16], [21, 22], [31, 32, 33, 34]]
COMPLETIONS = [[41, 42], [51, 52, 53, 54, 55], [61]]


def _left_pad(ids, am, cm, pad_id):
    """Move every row's real tokens to the right end."""
    out = [torch.full_like(x, pad_id if x is ids else 0) for x in (ids, am, cm)]
    for i in range(ids.shape[0]):
        n = int(am[i].sum())
        for src, dst in zip((ids, am, cm), out):
            dst[i, -n:] = src[i, :n]
    return out


def _reference_logprobs(model, tokens: list[int], n_completion: int) -> torch.Tensor:
    """Unpadded single-sequence forward + log_softmax: independent of both functions under test."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits[0]  # [L, V]
    logp = logits.log_softmax(-1)[:-1].gather(-1, torch.tensor(tokens[1:])[:, None]).squeeze(-1)  # [L-1]
    return logp[-n_completion:]  # [n_completion]


@pytest.mark.parametrize("padding", ["right", "left"])
def test_completion_logprobs_match_an_unpadded_forward(model, tok, padding):
    ids, am, cm = grpo.build_completion_batch(CONTEXTS, COMPLETIONS, tok.pad_token_id)
    if padding == "left":
        ids, am, cm = _left_pad(ids, am, cm, tok.pad_token_id)
    with torch.no_grad():
        logp = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=4)  # [B, T]
    assert (logp[cm == 0] == 0).all()
    for i, (ctx, comp) in enumerate(zip(CONTEXTS, COMPLETIONS)):
        torch.testing.assert_close(logp[i][cm[i].bool()], _reference_logprobs(model, ctx + comp, len(comp)),
                                   rtol=0, atol=1e-5)


def test_left_padding_with_absolute_position_embeddings(tok):
    # RoPE scores depend only on position differences, so a left-padding shift is invisible to
    # Qwen2; GPT-2's learned absolute positions are not. Scaled up so that positions matter.
    model = tiny.build_model(tok, hidden_size=32, layers=1, arch="gpt2")
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(50.0)
    ids, am, cm = _left_pad(*grpo.build_completion_batch(CONTEXTS, COMPLETIONS, tok.pad_token_id), tok.pad_token_id)
    with torch.no_grad():
        logp = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=3)  # [B, T]
        naive = model(input_ids=ids, attention_mask=am).logits.log_softmax(-1)  # [B, T, V] default positions
    for i, (ctx, comp) in enumerate(zip(CONTEXTS, COMPLETIONS)):
        torch.testing.assert_close(logp[i][cm[i].bool()], _reference_logprobs(model, ctx + comp, len(comp)),
                                   rtol=0, atol=1e-5)
    # Non-vacuity: without position ids from the attention mask, row 1 (most padding) comes out different.
    row = 1
    n = len(COMPLETIONS[row])
    naive_row = naive[row, -n - 1:-1].gather(-1, ids[row, -n:, None]).squeeze(-1)  # [n]
    assert (naive_row - _reference_logprobs(model, CONTEXTS[row] + COMPLETIONS[row], n)).abs().max() > 1e-3


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("chunk_size", [1, 3, 10_000])
@pytest.mark.parametrize("checkpoint_chunks", [True, False])
def test_chunked_equals_full_logits_values_and_gradients(model, tok, padding, chunk_size, checkpoint_chunks):
    ids, am, cm = grpo.build_completion_batch(CONTEXTS, COMPLETIONS, tok.pad_token_id)
    if padding == "left":
        ids, am, cm = _left_pad(ids, am, cm, tok.pad_token_id)
    weights = torch.linspace(-1.0, 2.0, ids.numel()).reshape(ids.shape)  # [B, T] distinct weight per token
    params = [p for p in model.parameters()]

    full = logprobs.full_logits_logprobs(model, ids, am, cm)  # [B, T]
    g_full = torch.autograd.grad((full * weights).sum(), params)
    chunked = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=chunk_size, checkpoint_chunks=checkpoint_chunks)
    g_chunked = torch.autograd.grad((chunked * weights).sum(), params)

    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)
    assert int(cm.sum()) == 8 and (chunked[cm.bool()] < 0).all()
    for a, b in zip(g_chunked, g_full):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert max(g.abs().max().item() for g in g_full) > 1e-3  # gradients are not trivially zero


def test_target_logprob_backward_by_hand_and_gradcheck():
    # logits (0, ln 3) -> softmax (1/4, 3/4); target 0: log p = ln(1/4) = -1.386294.
    # d log p_target / d logits = onehot - softmax = (3/4, -3/4); with incoming grad 2: (1.5, -1.5).
    logits = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64, requires_grad=True)
    out = logprobs._TargetLogProb.apply(logits, torch.tensor([0]))
    assert out.item() == pytest.approx(math.log(0.25), abs=1e-12)
    (2 * out).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[1.5, -1.5]], dtype=torch.float64), rtol=0, atol=1e-12)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: logprobs._TargetLogProb.apply(z, torch.tensor([0, 6, 3, 3])), (x,))


def test_completion_mask_on_first_column_is_rejected(model):
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="first token"):
        logprobs.completion_logprobs(model, ids, torch.ones_like(ids), torch.tensor([[1, 1, 0]]))


@pytest.mark.parametrize("arch,attr,value,neutral", [
    ("gemma2", "final_logit_softcapping", 2.0, None),
    ("granite", "logits_scaling", 4.0, 1.0),
    ("cohere", "logit_scale", 0.25, 1.0),
])
def test_chunked_applies_the_models_logit_postprocessing(tok, arch, attr, value, neutral):
    model = tiny.build_model(tok, hidden_size=32, layers=1, arch=arch)
    setattr(model.config, attr, value)
    if arch == "cohere":
        model.logit_scale = value  # Cohere copies the config value at init
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(100.0)  # make logits O(10) so the transform matters
    ids, am, cm = grpo.build_completion_batch(CONTEXTS, COMPLETIONS, tok.pad_token_id)
    with torch.no_grad():
        full = logprobs.full_logits_logprobs(model, ids, am, cm)
        chunked = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=3)
        setattr(model.config, attr, neutral)  # the head alone, as a naive implementation would use
        naive = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=3)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-4)
    assert (naive - full).abs().max() > 1e-2  # the transform is really exercised


def test_lora_adapters_train_and_disable_adapter_gives_reference(tok):
    from peft import LoraConfig, get_peft_model

    base = tiny.build_model(tok, hidden_size=32, layers=2, seed=1)
    ids, am, cm = grpo.build_completion_batch(CONTEXTS, COMPLETIONS, tok.pad_token_id)
    with torch.no_grad():
        base_logp = logprobs.full_logits_logprobs(base, ids, am, cm)  # [B, T]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # lora_B starts at zero; make the adapter change the model

    chunked = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=2)  # [B, T]
    full = logprobs.full_logits_logprobs(model, ids, am, cm)  # [B, T]
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-5)
    assert (chunked - base_logp).abs().max() > 1e-3  # adapters are active
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    grads = torch.autograd.grad(chunked.sum(), lora)
    assert all(g.abs().sum() > 0 for g in grads)
    with torch.no_grad(), model.disable_adapter():
        ref = logprobs.completion_logprobs(model, ids, am, cm, chunk_size=2)
    torch.testing.assert_close(ref, base_logp, rtol=0, atol=1e-5)
