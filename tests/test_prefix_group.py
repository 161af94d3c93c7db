"""The shared-prefix (Prefix Grouper) layout gives the per-row log-probs and parameter gradients.

Tolerance: float32, |grouped - per-row| <= 1e-5 for log-probs (values of order 1-5) and
<= 1e-5 x max(1, max |grad|) for each parameter's gradient. The two layouts run the same
operations on the same numbers, but in matrices of other shapes (a [prefix + suffixes] sequence
instead of G [context + completion] rows), so GEMM blocking and the attention's softmax
reductions sum in another order, and the prefix's gradient is a sum of G contributions formed
in another order: reassociation errors of a few float32 ulps per operation (measured below
1e-6 here). A real layout error (a suffix seeing another's tokens, a position off by one) moves
log-probs by 1e-2 or more; the last tests show the check catching both.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from r3rl.errors import InputError
from r3rl.training import grpo, prefix_group
from r3rl.training.logprobs import completion_logprobs

VOCAB = 61
TOL = 1e-5


def tiny_lm(arch: str = "qwen2", attn: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    return model.float().train()


def rows() -> tuple[list[list[int]], list[list[int]], torch.Tensor]:
    """Contexts, completions and groups: a group of 3 sharing 12 tokens (one row cut shorter and
    diverging, as a retry row), a group of 2 whose contexts are equal (the reflection case), a
    group of 1, and a group of 2 that shares nothing; completions of different lengths."""
    g = torch.Generator().manual_seed(1)

    def toks(n):
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    p, q = toks(12), toks(9)
    contexts = [p + toks(3), p + toks(5), p[:8] + toks(2), q, q, toks(7), [4] + toks(5), [5] + toks(6)]
    completions = [toks(n) for n in (4, 7, 2, 5, 3, 6, 2, 4)]
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    return contexts, completions, groups


def batch(padding: str = "right"):
    contexts, completions, groups = rows()
    ids, am, cm = grpo.build_completion_batch(contexts, completions, 0)
    if padding == "left":  # move each row's padding in front of it
        n = am.sum(dim=1)
        for i in range(ids.shape[0]):
            shift = int(ids.shape[1] - n[i])
            ids[i], am[i], cm[i] = ids[i].roll(shift), am[i].roll(shift), cm[i].roll(shift)
    return (ids, am, cm), groups


def logp_and_grads(model, b, groups):
    model.zero_grad(set_to_none=True)
    logp = completion_logprobs(model, *b, chunk_size=5, group_ids=groups)  # [B, T]
    w = torch.linspace(-1.0, 2.0, logp.numel()).reshape(logp.shape)  # a loss that weighs every token differently
    (logp * w).sum().backward()
    return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(model, b, groups):
    ref_logp, ref_grads = logp_and_grads(model, b, None)
    logp, grads = logp_and_grads(model, b, groups)
    assert (ref_logp != 0).sum() == b[2][:, 1:].sum()
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=TOL)
    assert ref_grads.keys() == grads.keys() and ref_grads
    for n, g in ref_grads.items():
        assert (grads[n] - g).abs().max() <= TOL * max(1.0, float(g.abs().max())), n


@pytest.mark.parametrize("arch", ["qwen2", "llama", "mistral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_grouped_equals_per_row(arch, attn):
    b, groups = batch()
    assert_same(tiny_lm(arch, attn), b, groups)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_grouped_equals_per_row_with_lora_checkpointing_and_padding(padding, lora, checkpointing):
    from peft import LoraConfig, get_peft_model

    from r3rl.training.policy import enable_activation_checkpointing

    model = tiny_lm()
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        for n, p in model.named_parameters():  # peft zero-initialises B: give the adapters a non-zero gradient path
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    if checkpointing:
        enable_activation_checkpointing(model)
        if lora:
            model.enable_input_require_grads()
    b, groups = batch(padding)
    assert_same(model, b, groups)
    if lora:  # the reference forward: adapters disabled, no grad
        with torch.no_grad(), model.disable_adapter():
            torch.testing.assert_close(completion_logprobs(model, *b, group_ids=groups),
                                       completion_logprobs(model, *b), rtol=0, atol=TOL)


def test_a_group_of_one_and_a_micro_batch_with_parts_of_groups():
    model = tiny_lm()
    b, groups = batch()
    one = tuple(t[5:6] for t in b)
    assert_same(model, one, groups[5:6])
    part = tuple(t[1:5] for t in b)  # the last two rows of group 0 and group 1: parts of two groups
    assert_same(model, part, groups[1:5])


def test_packing_shares_the_longest_common_context_only():
    b, groups = batch()
    packed = prefix_group.pack_groups(*b, groups)
    # group 0 shares 8 tokens (the cut row), group 1 its whole context (9), group 2 is one row (its
    # context, 7), group 3 shares nothing and becomes two rows of their own
    assert packed.prefix_len == [8, 9, 7, 6, 7]
    assert packed.tokens < int(b[1].sum())
    assert packed.tokens == int(b[1].sum()) - 2 * 8 - 9


def test_the_check_fails_when_a_suffix_sees_another_suffix(monkeypatch):
    real = prefix_group.dense_mask

    def leaky(packed):
        mask = real(packed)  # [Bg, 1, Tg, Tg]
        seg = packed.segment
        later = (seg[:, :, None] > 1) & (seg[:, None, :] == 1)  # suffixes 2.. also see suffix 1
        return mask | later[:, None]

    monkeypatch.setattr(prefix_group, "dense_mask", leaky)
    b, groups = batch()
    with pytest.raises(AssertionError):
        assert_same(tiny_lm(), b, groups)


def test_the_check_fails_when_suffix_positions_are_off_by_one(monkeypatch):
    real = prefix_group.pack_groups

    def shifted(*args, **kwargs):
        packed = real(*args, **kwargs)
        packed.position_ids = torch.where(packed.segment > 0, packed.position_ids + 1, packed.position_ids)
        return packed

    monkeypatch.setattr(prefix_group, "pack_groups", shifted)
    b, groups = batch()
    with pytest.raises(AssertionError):
        assert_same(tiny_lm(), b, groups)


def test_auto_falls_back_with_a_reason_and_on_refuses():
    model = tiny_lm()
    assert prefix_group.resolve("auto", model, torch.device("cpu")) == (True, None)
    assert prefix_group.resolve("off", model, torch.device("cpu")) == (False, None)
    use, reason = prefix_group.resolve("auto", model, torch.device("cuda"))
    assert not use and "sdpa on cuda" in reason
    use, reason = prefix_group.resolve("auto", model, torch.device("cpu"), deepspeed=True)
    assert not use and "DeepSpeed" in reason
    from transformers import GPT2Config, GPT2LMHeadModel

    other = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2))
    use, reason = prefix_group.resolve("auto", other, torch.device("cpu"))
    assert not use and "gpt2" in reason
    with pytest.raises(InputError, match="train.shared_prefix=on"):
        prefix_group.resolve("on", other, torch.device("cpu"))


def test_plan_counts_each_context_once_per_group_with_sharing_on():
    from r3rl.config import Config
    from r3rl.training import plan

    cfg = Config()
    cfg.train.micro_batch_size, cfg.rollout.group_size = 2, 8
    g = cfg.generation
    context = 1000 + g.max_attempt_tokens + plan.INSTRUCTION_TOKENS
    cfg.train.shared_prefix = "off"
    assert plan.training_tokens(cfg, 1000) == 2 * 8 * (context + g.max_reflection_tokens)
    cfg.train.shared_prefix = "on"
    assert plan.training_tokens(cfg, 1000) == 2 * (context + 8 * g.max_reflection_tokens)
    cfg.train.shared_prefix = "auto"  # a GPU run shares only with the covered CUDA kernel
    assert not plan.training_shares_prefix(cfg)
    cfg.model.attn_implementation = "flex_attention"
    assert plan.training_shares_prefix(cfg)
