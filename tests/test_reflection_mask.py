"""Only reflection tokens reach the loss.

A real reflection training sample is built with the tiny tokenizer's chat template
through r3rl.environment.prompts, the way the rollout builds it:

    context    = task (user) + failed attempt (assistant) + reflect instruction (user) + assistant header
    completion = the reflection, its <|im_end|> included                 <- the only training targets
    afterwards = continuation_suffix (retry instruction + header) + retry <- generated only to be scored

Task and attempt tokens are context: they influence the reflection's log-probs
through attention, as intended, but they are never predicted by the loss.
"""

from __future__ import annotations

import pytest
import torch

from r3rl.demo import tiny
from r3rl.environment import prompts
from r3rl.training import grpo, logprobs

TASK = "Use the numbers [3, 5, 7] to create an equation that equals 22."
ATTEMPTS = ["<answer>3 + 5 + 7</answer>", "<answer>3 * 5 + 6</answer>"]
REFLECTIONS = [
    "I added the numbers but the sum is 15, not 22. I should multiply first.",
    "I used 6, which is not one of the numbers.",
]
RETRIES = ["<answer>3 * 5 + 7</answer>", "<answer>5 * 3 + 7</answer>"]


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model(tok, hidden_size=32, layers=2, seed=3)


def _sample(tok, attempt: str, reflection: str, retry: str) -> dict:
    """Token ids of one reflect/retry round, split into its parts."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    messages = [
        {"role": "user", "content": TASK},
        {"role": "assistant", "content": attempt},
        {"role": "user", "content": prompts.Instructions().reflect_text()},
    ]
    context = prompts.encode(tok, messages)
    refl = tok(reflection, add_special_tokens=False)["input_ids"] + [end]  # as generated: stop token included
    suffix = prompts.continuation_suffix(tok, messages, prompts.DEFAULT_RETRY, None, refl, stop_ids=[end])
    retry = tok(retry, add_special_tokens=False)["input_ids"] + [end]
    return {"messages": messages, "context": context, "reflection": refl, "suffix": suffix, "retry": retry}


@pytest.fixture(scope="module")
def samples(tok):
    return [_sample(tok, a, r, y) for a, r, y in zip(ATTEMPTS, REFLECTIONS, RETRIES)]


def _with_retry(samples, pad_id, retries=None, extra=0):
    """Batch of whole conversations (context + reflection + suffix + retry); mask on the reflection only."""
    rows, n_ctx, n_refl = [], [], []
    for i, s in enumerate(samples):
        retry = s["retry"] if retries is None else retries[i]
        rows.append(s["context"] + s["reflection"] + s["suffix"] + retry + [pad_id] * extra)
        n_ctx.append(len(s["context"]))
        n_refl.append(len(s["reflection"]))
    seq_len = max(map(len, rows))
    ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)  # [B, T]
    am = torch.zeros_like(ids)  # [B, T]
    cm = torch.zeros_like(ids)  # [B, T]
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        am[i, :len(row)] = 1
        cm[i, n_ctx[i]:n_ctx[i] + n_refl[i]] = 1
    return ids, am, cm


def _loss(model, ids, am, cm, fn=logprobs.completion_logprobs):
    """GRPO loss with negative and positive advantages, ratios inside and outside the clip range, and KL.

    logp_old and logp_ref are fixed tensors (not derived from logp), so the loss *value*
    depends on the current log-probs, not only its gradient. The tiny model's log-probs
    are near -ln(594) = -6.39; old log-probs of -6.4 +- 0.25 give ratios of about 0.78..1.29.
    """
    logp = fn(model, ids, am, cm)  # [B, T]
    wobble = 0.25 * torch.sin(torch.arange(ids.numel(), dtype=torch.float32)).reshape(ids.shape)  # [B, T]
    logp_old = (-6.4 + wobble) * cm  # [B, T]
    logp_ref = torch.full_like(logp, -6.3) * cm  # [B, T]
    adv = torch.tensor([1.0, -1.0])  # [B]
    loss, _ = grpo.policy_loss(logp, logp_old, adv, cm, beta=0.04, logp_ref=logp_ref)
    return loss


def test_the_sample_is_the_real_conversation(tok, samples):
    # The pieces concatenate to exactly what the chat template renders for the whole conversation.
    for s, reflection, retry in zip(samples, REFLECTIONS, RETRIES):
        assert tok.decode(s["context"]).endswith("<|im_start|>assistant\n")
        conv = s["messages"] + [
            {"role": "assistant", "content": reflection},
            {"role": "user", "content": prompts.DEFAULT_RETRY},
            {"role": "assistant", "content": retry},
        ]
        whole = prompts.encode(tok, conv, add_generation_prompt=False)
        assert s["context"] + s["reflection"] + s["suffix"] + s["retry"] == whole[:len(whole) - 1]  # final "\n"
        assert tok.decode(whole[len(whole) - 1:]) == "\n"


def test_mask_covers_exactly_the_reflection_and_its_end_of_turn(tok, samples):
    ids, am, cm = grpo.build_completion_batch([s["context"] for s in samples], [s["reflection"] for s in samples],
                                              tok.pad_token_id)
    for i, (s, reflection) in enumerate(zip(samples, REFLECTIONS)):
        n_ctx, n_refl = len(s["context"]), len(s["reflection"])
        assert cm[i].tolist() == [0] * n_ctx + [1] * n_refl + [0] * (ids.shape[1] - n_ctx - n_refl)
        assert ids[i][cm[i].bool()].tolist() == s["reflection"]
        assert tok.decode(ids[i][cm[i].bool()]) == reflection + "<|im_end|>"
        assert tok.decode(ids[i, :n_ctx]) == tok.decode(s["context"])  # the context, untouched
    # In the whole conversation, the retry instruction and the retry are outside the mask.
    ids, am, cm = _with_retry(samples, tok.pad_token_id)
    for i, s in enumerate(samples):
        start = len(s["context"]) + len(s["reflection"])
        tail = ids[i, start:int(am[i].sum())]
        assert tail.tolist() == s["suffix"] + s["retry"]
        assert prompts.DEFAULT_RETRY in tok.decode(tail)
        assert cm[i, start:].sum() == 0 and cm[i, :len(s["context"])].sum() == 0


@pytest.mark.parametrize("fn", [logprobs.completion_logprobs, logprobs.full_logits_logprobs])
def test_retry_tokens_leave_loss_and_gradients_bit_identical(model, tok, samples, fn):
    params = list(model.parameters())

    def loss_and_grads(ids, am, cm):
        loss = _loss(model, ids, am, cm, fn)
        return loss, torch.autograd.grad(loss, params)

    # Reflection only, padded to the length of the whole conversation (same shapes, so same kernels).
    full_ids, full_am, full_cm = _with_retry(samples, tok.pad_token_id)
    base_ids, base_am, base_cm = grpo.build_completion_batch(
        [s["context"] for s in samples], [s["reflection"] for s in samples], tok.pad_token_id)
    pad = full_ids.shape[1] - base_ids.shape[1]
    base_ids = torch.nn.functional.pad(base_ids, (0, pad), value=tok.pad_token_id)  # [B, T]
    base_am = torch.nn.functional.pad(base_am, (0, pad))  # [B, T]
    base_cm = torch.nn.functional.pad(base_cm, (0, pad))  # [B, T]
    assert torch.equal(base_cm, full_cm)

    # Every retry token but the final <|im_end|> replaced by another token.
    other = [[(t + 1) % len(tok) for t in s["retry"][:-1]] + s["retry"][-1:] for s in samples]
    changed_ids, changed_am, changed_cm = _with_retry(samples, tok.pad_token_id, retries=other)
    assert changed_ids.shape == full_ids.shape and not torch.equal(changed_ids, full_ids)

    loss_base, g_base = loss_and_grads(base_ids, base_am, base_cm)
    for ids, am, cm in [(full_ids, full_am, full_cm), (changed_ids, changed_am, changed_cm)]:
        loss, grads = loss_and_grads(ids, am, cm)
        assert torch.equal(loss, loss_base)
        assert all(torch.equal(a, b) for a, b in zip(grads, g_base))

    # The comparison is not vacuous: changing one reflection token does change the loss.
    edited = full_ids.clone()
    pos = len(samples[0]["context"]) + 2
    edited[0, pos] = (edited[0, pos] + 1) % len(tok)
    loss_edit, _ = loss_and_grads(edited, full_am, full_cm)
    assert not torch.equal(loss_edit, loss_base)


def test_no_logit_outside_the_reflection_gets_gradient(model, tok, samples):
    ids, am, cm = _with_retry(samples, tok.pad_token_id)
    captured = []

    def keep_logits(module, inputs, output):
        output.retain_grad()
        captured.append(output)

    handle = model.get_output_embeddings().register_forward_hook(keep_logits)
    try:
        loss = _loss(model, ids, am, cm, logprobs.full_logits_logprobs)
        loss.backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    (logits,) = captured
    grad = logits.grad  # [B, T, V]; row t predicts token t + 1
    predicts_reflection = torch.zeros_like(cm, dtype=torch.bool)  # [B, T]
    predicts_reflection[:, :-1] = cm[:, 1:].bool()
    row_norm = grad.abs().sum(-1)  # [B, T]
    assert (row_norm[~predicts_reflection] == 0).all()  # task, attempt, instructions, retry, padding: exactly 0
    assert (row_norm[predicts_reflection] > 0).all()  # every reflection token, <|im_end|> included, is a target


def test_chunked_head_only_sees_reflection_positions(model, tok, samples):
    # The chunked path never computes logits anywhere else: the head gets exactly one row per reflection token.
    ids, am, cm = _with_retry(samples, tok.pad_token_id)
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        with torch.no_grad():
            logprobs.completion_logprobs(model, ids, am, cm, chunk_size=7)
    finally:
        handle.remove()
    n_refl = sum(len(s["reflection"]) for s in samples)
    assert sum(rows) == n_refl == int(cm.sum())
    assert all(r <= 7 for r in rows)
