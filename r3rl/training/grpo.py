"""GRPO maths as pure tensor functions: group advantages, clipped loss, KL, batch layout.

Nothing here holds state, calls a model or touches an optimizer; the log-probs that
feed these functions come from `logprobs.py`, and `trainer.py` composes both.

Deliberate choices (each one a place where GRPO implementations differ):

* Advantages use the *sample* standard deviation (Bessel's correction, n - 1), as
  TRL's GRPOTrainer does (`torch.std` default). With G = 2 and rewards {1, 0} the
  population std would be 0.5 and the advantages +-1; the sample std is 0.707 and
  the advantages +-0.707. A group whose rewards are all equal (a group of one
  included) gets an advantage of exactly 0.0, never NaN, and is flagged by
  `zero_signal_mask` so the trainer may drop it from the backward pass.
* Log-probs follow docs/design.md, "The log-prob contract": the current, "old" and
  reference log-probs are all of the training forward, softmax(logits / T) at the trained
  stage's temperature; the engine's sampling log-probs enter only through
  `truncated_is_weights` and `logprob_mismatch`.
* The KL penalty is the k3 estimator exp(ref - logp) - (ref - logp) - 1 (Schulman,
  "Approximating KL divergence"), unbiased for KL(pi || ref) and always >= 0.

Tensor conventions: B sequences, T padded positions, V vocabulary, H hidden size,
N completion tokens in the batch. Position t of a completion mask is 1 when token
t is a completion token; it is predicted by the hidden state at t - 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The variants, defined once with the config fields that choose them (train.advantage, train.loss_aggregation).
from r3rl.config import AdvantageMode, LossAggregation  # noqa: F401  (re-exported)


# ----------------------------------------------------------------------------- advantages


def _group_index(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, int]:
    """Validate inputs and map arbitrary group ids to 0..G-1."""
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be 1-D of equal length, got {tuple(rewards.shape)} "
                         f"and {tuple(group_ids.shape)}")
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must be a floating tensor, got {rewards.dtype}")
    if group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf; a broken verifier must not look like a weak model")
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [N]
    num_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    return inverse, num_groups


def zero_signal_mask(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """True for members of groups whose rewards are all equal (groups of one included).

    Such groups carry no learning signal: every advantage is 0, so their policy
    gradient is exactly zero and the trainer can skip them and log the fraction.

    Args:
        rewards: [N] floating rewards.
        group_ids: [N] integer group of each reward (any values; need not be contiguous).
    Returns:
        [N] bool.
    """
    inverse, num_groups = _group_index(rewards, group_ids)  # [N]
    hi = rewards.new_full((num_groups,), float("-inf")).scatter_reduce(0, inverse, rewards, "amax")  # [G]
    lo = rewards.new_full((num_groups,), float("inf")).scatter_reduce(0, inverse, rewards, "amin")  # [G]
    return (hi == lo)[inverse]  # [N]


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mode: AdvantageMode | str = AdvantageMode.NORMALIZED,
    eps: float = 1e-4,
) -> Tensor:
    """Per-sample advantages normalised inside each group.

    NORMALIZED: (r - mean_g) / (std_g + eps) with the sample std (n - 1), as TRL.
    MEAN_ONLY:  r - mean_g (Dr. GRPO).
    All-equal groups (and groups of one, whose sample std is undefined) get exactly
    0.0: computing r - mean in floating point could leave a 1e-17 residue, which
    the std division would blow up into a +-1 advantage on pure noise.

    Args:
        rewards: [N] floating rewards.
        group_ids: [N] integer group ids (any values).
    Returns:
        [N] advantages, same dtype as rewards. Statistics are computed in float64.
    """
    mode = AdvantageMode(mode)
    inverse, num_groups = _group_index(rewards, group_ids)  # [N]
    r = rewards.to(torch.float64)  # [N]
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, torch.ones_like(r))  # [G]
    mean = torch.zeros_like(count).index_add_(0, inverse, r) / count  # [G]
    centred = r - mean[inverse]  # [N]
    if mode is AdvantageMode.NORMALIZED:
        sq = torch.zeros_like(count).index_add_(0, inverse, centred * centred)  # [G]
        std = (sq / (count - 1).clamp(min=1)).sqrt()  # [G] sample std; 0 for groups of one
        adv = centred / (std[inverse] + eps)  # [N]
    else:
        adv = centred  # [N]
    adv = torch.where(zero_signal_mask(rewards, group_ids), torch.zeros_like(adv), adv)  # [N]
    return adv.to(rewards.dtype)  # [N]


# ----------------------------------------------------------------------------- loss


def policy_loss(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    logp_ref: Tensor | None = None,
    aggregation: LossAggregation | str = LossAggregation.SEQUENCE_MEAN,
    norm_constant: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO surrogate with an optional k3 KL penalty, over the masked tokens.

    Per token: -w * min(rho * A, clip(rho, 1 - clip_eps, 1 + clip_eps_high) * A) + beta * KL_k3,
    rho = exp(logp - logp_old), KL_k3 = exp(ref - logp) - (ref - logp) - 1, and w the
    importance-sampling weight (`is_weights`, 1 without it) on the policy term only.

    Aggregation and the normaliser `norm_constant`:
      * SEQUENCE_MEAN: sum over sequences of (token mean of the sequence), divided by
        norm_constant, which defaults to B (then it is the plain batch mean).
      * TOKEN_SUM: sum over all masked tokens divided by norm_constant, which is
        required (Dr. GRPO uses max_completion_length * number of sequences).
    Gradient accumulation: split the batch by sequences and pass the *full* batch's
    normaliser to every micro-batch (SEQUENCE_MEAN: the full batch's number of
    sequences; TOKEN_SUM: the same constant); then the sum of the micro-batch losses
    (and of their gradients) equals the full-batch loss. Under DDP, where gradients
    are averaged over W ranks, pass the per-rank normaliser (global / W).

    Args:
        logp: [B, T] current policy log-probs (with grad); zeros off the mask are fine.
        logp_old: [B, T] log-probs the samples were drawn with (no grad). With one
            optimizer step per batch pass logp.detach().
        advantages: [B] one advantage per sequence.
        mask: [B, T] 1 (or True) on tokens that enter the loss.
        clip_eps / clip_eps_high: lower / upper clip range; upper defaults to lower
            (a larger upper value is DAPO's "clip higher").
        beta: KL coefficient; needs logp_ref when > 0.
        logp_ref: [B, T] reference-model log-probs (no grad), or None.
        is_weights: [B, T] per-token weights of the policy term (no grad), e.g.
            `truncated_is_weights`, or None.
    Returns:
        (loss, stats). stats holds detached python floats over the masked tokens:
        kl (mean k3, 0.0 without logp_ref), clip_frac (share of tokens where the clip
        is active, i.e. gets zero gradient), ratio_mean, num_tokens.
    """
    aggregation = LossAggregation(aggregation)
    if logp.shape != logp_old.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp, logp_old and mask must share a [B, T] shape, got {tuple(logp.shape)}, "
                         f"{tuple(logp_old.shape)}, {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [B]={tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")
    if beta > 0 and logp_ref is None:
        raise ValueError("beta > 0 needs logp_ref (reference-model log-probs)")
    eps_low = clip_eps
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high

    on = mask.bool()  # [B, T]
    m = on.to(logp.dtype)  # [B, T]
    zero = torch.zeros_like(logp)  # [B, T]
    # Masked positions may hold garbage (padding); zero them before exp so no inf * 0 = NaN appears.
    log_ratio = torch.where(on, logp - logp_old, zero)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    adv = advantages.to(logp.dtype)[:, None]  # [B, 1]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)  # [B, T]
    per_token = -surrogate  # [B, T]
    if is_weights is not None:
        if is_weights.shape != logp.shape:
            raise ValueError(f"is_weights must be [B, T]={tuple(logp.shape)}, got {tuple(is_weights.shape)}")
        per_token = per_token * torch.where(on, is_weights.detach().to(logp.dtype), zero)  # [B, T]

    kl = None
    if logp_ref is not None:
        ref_diff = torch.where(on, logp_ref - logp, zero)  # [B, T]
        kl = torch.exp(ref_diff) - ref_diff - 1  # [B, T]
        if beta != 0:
            per_token = per_token + beta * kl  # [B, T]

    per_token = per_token * m  # [B, T]
    if aggregation is LossAggregation.SEQUENCE_MEAN:
        seq_len = m.sum(dim=1).clamp(min=1)  # [B]
        seq_loss = per_token.sum(dim=1) / seq_len  # [B]
        denom = float(logp.shape[0]) if norm_constant is None else float(norm_constant)
        loss = seq_loss.sum() / denom  # []
    else:
        if norm_constant is None:
            raise ValueError("LossAggregation.TOKEN_SUM needs norm_constant (e.g. max_completion_length * num_sequences)")
        loss = per_token.sum() / float(norm_constant)  # []

    with torch.no_grad():
        n_tok = m.sum()  # []
        safe_n = n_tok.clamp(min=1)  # []
        clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))  # [B, T]
        kl_mean = (kl * m).sum() / safe_n if kl is not None else n_tok.new_zeros(())  # []
        values = torch.stack([
            kl_mean,
            (clipped.to(m.dtype) * m).sum() / safe_n,
            (ratio * m).sum() / safe_n,
            n_tok,
        ]).tolist()  # one device sync for all four
    stats = dict(zip(("kl", "clip_frac", "ratio_mean", "num_tokens"), values))
    return loss, stats


# ----------------------------------------------------------------------------- sampling vs training


def truncated_is_weights(logp_old: Tensor, logp_sampling: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling (TIS, as TRL's vllm_importance_sampling_correction):
    w = min(exp(logp_old - logp_sampling), cap) per token, correcting for tokens sampled by
    kernels that differ from the training forward's.

    Args:
        logp_old: [B, T] training-forward log-probs before the update (no grad).
        logp_sampling: [B, T] the engine's log-probs of the same tokens (`completion_values`).
        mask: [B, T] completion mask; weights are 1.0 off it.
        cap: upper bound of w (> 0).
    Returns:
        [B, T] float32 weights, no grad.
    """
    if cap <= 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    on = mask.bool()  # [B, T]
    diff = torch.where(on, logp_old.detach().float() - logp_sampling.float(), torch.zeros_like(logp_sampling.float()))  # [B, T]
    return torch.exp(diff).clamp(max=cap)  # [B, T]


def logprob_mismatch(logp_old: Tensor, logp_sampling: Tensor, mask: Tensor) -> dict[str, float]:
    """|logp_old - logp_sampling| over the masked tokens: {"diff_sum", "diff_max", "diff_tokens"} (floats)."""
    on = mask.bool()  # [B, T]
    diff = (logp_old.detach().float() - logp_sampling.float()).abs()[on]  # [N]
    if diff.numel() == 0:
        return {"diff_sum": 0.0, "diff_max": 0.0, "diff_tokens": 0.0}
    total, top = torch.stack([diff.sum(), diff.max()]).tolist()
    return {"diff_sum": total, "diff_max": top, "diff_tokens": float(diff.numel())}


# ----------------------------------------------------------------------------- batching


def build_completion_batch(
    context_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded [context + completion] rows and their masks.

    The completion (a reflection, its end-of-turn token included) is exactly where
    completion_mask is 1; nothing of the context is a training target.

    Returns:
        input_ids [B, T] long, attention_mask [B, T] long, completion_mask [B, T] long.
    """
    if len(context_ids) != len(completion_ids):
        raise ValueError(f"{len(context_ids)} contexts but {len(completion_ids)} completions")
    if not context_ids:
        raise ValueError("empty batch")
    for i, (ctx, comp) in enumerate(zip(context_ids, completion_ids)):
        if not ctx:
            raise ValueError(f"row {i}: empty context; the first completion token needs a prefix")
        if not comp:
            raise ValueError(f"row {i}: empty completion")
    seq_len = max(len(c) + len(r) for c, r in zip(context_ids, completion_ids))
    bsz = len(context_ids)
    input_ids = torch.full((bsz, seq_len), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros(bsz, seq_len, dtype=torch.long)  # [B, T]
    completion_mask = torch.zeros(bsz, seq_len, dtype=torch.long)  # [B, T]
    for i, (ctx, comp) in enumerate(zip(context_ids, completion_ids)):
        n_ctx, n_all = len(ctx), len(ctx) + len(comp)
        input_ids[i, :n_all] = torch.tensor(list(ctx) + list(comp), dtype=torch.long)  # [n_all]
        attention_mask[i, :n_all] = 1
        completion_mask[i, n_ctx:n_all] = 1
    return input_ids, attention_mask, completion_mask


def completion_values(values: list[list[float]], completion_mask: Tensor) -> Tensor:
    """Place per-completion-token values (the engine's sampling log-probs) at their [B, T] positions.

    Row i's values fill row i's completion positions left to right; zeros elsewhere.

    Args:
        values: B lists; len(values[i]) must equal completion_mask[i].sum().
        completion_mask: [B, T].
    Returns:
        [B, T] float32.
    """
    on = completion_mask.bool()  # [B, T]
    counts = on.sum(dim=1).tolist()  # [B]
    if len(values) != on.shape[0] or any(len(v) != c for v, c in zip(values, counts)):
        raise ValueError(f"values lengths {[len(v) for v in values]} do not match completion lengths {counts}")
    out = torch.zeros(on.shape, dtype=torch.float32, device=completion_mask.device)  # [B, T]
    flat = torch.tensor([x for v in values for x in v], dtype=torch.float32, device=completion_mask.device)  # [N]
    out[on] = flat  # boolean indexing is row-major, matching the row-by-row order of `flat`
    return out  # [B, T]
