"""Completion log-probs from a causal LM: the model-calling half of the loss.

The LM head runs only on completion positions and in chunks: with a 150k
vocabulary the logits of a whole batch are the memory peak of a step. Log-probs
are those of the model's own output distribution, including the logit transforms
some architectures apply after the head (Cohere, Granite, Gemma 2/3).

Tensor conventions as in `grpo.py`: B sequences, T padded positions, V vocabulary,
H hidden size, N completion tokens in the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """The transformer body, the LM head and the config of a (possibly peft-wrapped) causal LM.

    peft's LoRA layers are injected inside these modules, so calling them directly
    still trains the adapters and still honours `model.disable_adapter()`.
    """
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = m.get_decoder() if hasattr(m, "get_decoder") else None
    if body is None:
        body = getattr(m, "model", None)
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if body is None or head is None:
        raise TypeError(f"{type(m).__name__} does not expose a decoder body and an output embedding; "
                        "use full_logits_logprobs for it")
    return body, head, getattr(m, "config", None)


def _logit_transform(config: Any) -> tuple[float, float | None]:
    """(scale, softcap) that a model's CausalLM forward applies after the LM head.

    Cohere multiplies by config.logit_scale, Granite divides by config.logits_scaling,
    Gemma 2/3 soft-cap with config.final_logit_softcapping. Skipping them would give
    log-probs of a different distribution from the one the model samples from.
    """
    scale = 1.0
    if config is None:
        return scale, None
    if getattr(config, "logit_scale", None) is not None:
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return scale, (float(softcap) if softcap else None)


class _TargetLogProb(torch.autograd.Function):
    """log_softmax(logits)[i, targets[i]] with a backward that allocates one [n, V] buffer.

    Autograd's gather - logsumexp backward materialises about four [n, V] tensors
    (a zero-filled scatter, exp(x - lse), its product with the incoming grad, their
    sum); here the gradient softmax * (-g) + onehot * g is built in place in one.
    Measured in bench/memory.py. Not twice differentiable (nothing here needs it).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=-1)  # [n]
        ctx.save_for_backward(logits, targets, lse)
        return logits.gather(-1, targets[:, None]).squeeze(-1) - lse  # [n]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        grad = (logits - lse[:, None]).exp_()  # [n, V] softmax, the only new [n, V] tensor
        grad.mul_(-grad_out[:, None])  # [n, V]
        grad.scatter_add_(1, targets[:, None], grad_out[:, None])  # [n, V] + onehot * g
        return grad, None


def _chunk_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor, scale: float,
                    softcap: float | None, temperature: float = 1.0) -> Tensor:
    """log p(target | hidden) for a chunk of positions, in float32, of softmax(logits / temperature)."""
    logits = head(hidden).float()  # [n, V]
    if scale != 1.0:
        logits = logits * scale  # [n, V]
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap  # [n, V]
    if temperature != 1.0:
        logits = logits / temperature  # [n, V] the distribution the engine samples from (sampling.py)
    return _TargetLogProb.apply(logits, targets)  # [n]


def _position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left and right padding give the same values."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # [B, T]


def _check_inputs(input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor) -> None:
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or completion_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids, attention_mask and completion_mask must share a [B, T] shape, got "
                         f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}")
    if bool(completion_mask[:, 0].bool().any()):
        raise ValueError("completion_mask[:, 0] is set: the first token has no prefix to be predicted from")


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    chunk_size: int = 1024,
    checkpoint_chunks: bool = True,
    temperature: float = 1.0,
    group_ids: Tensor | None = None,
) -> Tensor:
    """log p(token_t | tokens_<t) at completion positions, computing the LM head there only.

    The body runs once over the whole batch; its hidden states at the N positions
    that predict completion tokens are gathered, and the head + log-softmax run on
    `chunk_size` of them at a time, so [N, V] logits never exist at once. With
    `checkpoint_chunks` (and grad enabled) each chunk's logits are recomputed in the
    backward pass instead of being kept, so the peak is one chunk's [chunk, V]
    instead of [N, V]; see bench/memory.py for measurements. Under no_grad (old or
    reference log-probs) checkpointing is skipped since nothing is kept anyway.

    For FSDP/DDP, call this inside an nn.Module's forward (the trainer does) so the
    wrapper's hooks run; the function itself keeps no state.

    Args:
        model: a Hugging Face causal LM, optionally peft-wrapped (LoRA adapters train;
            `with model.disable_adapter():` gives the reference model).
        input_ids: [B, T] token ids, left or right padded.
        attention_mask: [B, T] 1 on real tokens.
        completion_mask: [B, T] 1 on completion tokens; column 0 must be 0.
        temperature: log-probs of softmax(logits / temperature), the distribution the engine samples
            from at that temperature before top-k / top-p (as TRL's GRPO); 0 (greedy) counts as 1.
        group_ids: [B] integer group of each row, or None. Given, the rows of a group run the body
            once over their common context (prefix_group.py: the shared-prefix layout); the result
            is the same up to floating-point reassociation.
    Returns:
        [B, T] float32 log-probs, 0.0 where completion_mask is 0.
    """
    _check_inputs(input_ids, attention_mask, completion_mask)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    body, head, config = _body_and_head(model)
    scale, softcap = _logit_transform(config)
    temperature = float(temperature) if temperature > 0 else 1.0
    bsz, seq_len = input_ids.shape
    rows, cols = completion_mask[:, 1:].bool().nonzero(as_tuple=True)  # [N], [N]: cols = predicting position
    targets = input_ids[rows, cols + 1]  # [N]

    if group_ids is None:
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask), use_cache=False
        ).last_hidden_state  # [B, T, H]
        hidden_sel = hidden[rows, cols]  # [N, H]
    else:
        hidden_sel = _grouped_hidden(body, config, input_ids, attention_mask, completion_mask, group_ids, rows, cols)  # [N, H]

    use_ckpt = checkpoint_chunks and torch.is_grad_enabled() and hidden_sel.requires_grad
    pieces = []
    for start in range(0, hidden_sel.shape[0], chunk_size):
        h = hidden_sel[start:start + chunk_size]  # [n, H]
        t = targets[start:start + chunk_size]  # [n]
        if use_ckpt:
            pieces.append(checkpoint(_chunk_logprobs, head, h, t, scale, softcap, temperature, use_reentrant=False))  # [n]
        else:
            pieces.append(_chunk_logprobs(head, h, t, scale, softcap, temperature))  # [n]
    logp = torch.cat(pieces) if pieces else hidden_sel.new_zeros(0, dtype=torch.float32)  # [N]
    out = logp.new_zeros(bsz, seq_len)  # [B, T]
    return out.index_put((rows, cols + 1), logp)  # [B, T]


def _grouped_hidden(body: torch.nn.Module, config: Any, input_ids: Tensor, attention_mask: Tensor,
                    completion_mask: Tensor, group_ids: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """[N, H] the body's hidden states at the predicting positions (rows, cols), from the shared-prefix layout."""
    from r3rl.training import prefix_group

    packed = prefix_group.pack_groups(input_ids, attention_mask, completion_mask, group_ids)
    mask = prefix_group.attention_mask_for(packed, getattr(config, "_attn_implementation", None),
                                           body.get_input_embeddings().weight.dtype)
    hidden = body(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                  use_cache=False).last_hidden_state  # [Bg, Tg, H]
    at = packed.where[rows, cols]  # [N, 2] (packed row, packed column) of each predicting position
    return hidden[at[:, 0], at[:, 1]]  # [N, H]


def full_logits_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
) -> Tensor:
    """Reference implementation: the model's own forward with logits at every position.

    Uses [B, T, V] logits (the memory peak `completion_logprobs` avoids); kept for
    tests, the benchmark, and models whose forward post-processes logits in ways
    `completion_logprobs` does not know. Same contract and output as completion_logprobs.
    """
    _check_inputs(input_ids, attention_mask, completion_mask)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=_position_ids(attention_mask), use_cache=False
    ).logits[:, :-1].float()  # [B, T-1, V]
    targets = input_ids[:, 1:]  # [B, T-1]
    logp = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [B, T-1]
    logp = torch.cat([logp.new_zeros(logp.shape[0], 1), logp], dim=1)  # [B, T]
    return torch.where(completion_mask.bool(), logp, torch.zeros_like(logp))  # [B, T]
