"""The demo's synthetic traces and the shipped demo model's behaviour (loads it and generates: a few seconds)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import r3rl
from r3rl.environment import prompts
from r3rl.demo.traces import (
    DRILL_PROMPT,
    GENERIC_REFLECTIONS,
    WORKING_PREFIX,
    TraceConfig,
    column_working,
    digit_off_by_one,
    dropped_carry,
    render_trace,
    sample_trace,
    sloppy_answer,
    trace_corpus,
)
from r3rl.demo.addition import AdditionTask

ASSET = Path(r3rl.__file__).parent / "demo" / "model"


@pytest.fixture(scope="module")
def tok():
    from r3rl.demo.tiny import build_tokenizer

    return build_tokenizer(vocab_size=1000, extra_corpus=trace_corpus(AdditionTask(), 300, seed=0))


# ------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize(
    "a, b, text",
    [
        (347, 285, "Let me add column by column. 347 + 285: 7+5=12, write 2 carry 1. 4+8+1=13, write 3 carry 1. "
                   "3+2+1=6. The sum is 632."),
        (57, 68, "Let me add column by column. 57 + 68: 7+8=15, write 5 carry 1. 5+6+1=12. The sum is 125."),
        (41, 23, "Let me add column by column. 41 + 23: 1+3=4, write 4. 4+2=6. The sum is 64."),
        (5, 123, "Let me add column by column. 5 + 123: 5+3=8, write 8. 0+2=2, write 2. 0+1=1. The sum is 128."),
        (0, 0, "Let me add column by column. 0 + 0: 0+0=0. The sum is 0."),
    ],
)
def test_column_working_by_hand(a: int, b: int, text: str) -> None:
    assert column_working(a, b) == text


def test_column_working_final_sum_is_always_right() -> None:
    rng = random.Random(0)
    for _ in range(500):
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        assert column_working(a, b).endswith(f"The sum is {a + b}.")


def test_slips_are_wrong_and_plausible() -> None:
    rng = random.Random(1)
    assert dropped_carry(41, 23, rng) is None  # no carry to drop
    assert dropped_carry(57, 68, rng) in (125 - 10, 125 - 100)
    for _ in range(500):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        s = digit_off_by_one(a + b, rng)
        assert s != a + b and len(str(s)) == len(str(a + b))
        assert sum(x != y for x, y in zip(str(s), str(a + b))) == 1


def test_trace_config_is_validated() -> None:
    with pytest.raises(ValueError, match="p_working"):
        TraceConfig(p_working=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        TraceConfig(first_share=0.5, drill_share=0.3, skill_share=0.3)


def test_sloppy_answer_rate() -> None:
    rng = random.Random(2)
    n = 4000
    k = sum(sloppy_answer(57, 68, rng, p_correct=0.3) == 125 for _ in range(n))
    # Binomial(4000, 0.3): sd = 29; 4 sd either side.
    assert abs(k - 0.3 * n) < 4 * 29


# ------------------------------------------------------------------------ traces
def test_trace_kinds_follow_the_protocol() -> None:
    task, rng = AdditionTask(), random.Random(3)
    kinds: dict[str, int] = {}
    for ex in task.load_examples("train", n=400, seed=0):
        tr = sample_trace(task, ex, rng)
        kinds[tr.kind] = kinds.get(tr.kind, 0) + 1
        roles = [m["role"] for m in tr.messages]
        users = [m["content"] for m in tr.messages if m["role"] == "user"]
        if tr.kind == "drill":
            assert tr.messages == [{"role": "user", "content": DRILL_PROMPT.format(a=ex["a"], b=ex["b"])},
                                   {"role": "assistant", "content": column_working(ex["a"], ex["b"])}]
            continue
        assert users[0] == task.prompt(ex)
        assert roles == ["user", "assistant"] * (len(roles) // 2)
        first_ok = task.verify(ex, tr.messages[1]["content"]).ok
        if tr.kind == "first":
            assert len(tr.messages) == 2
        elif tr.kind == "single":
            assert first_ok and len(tr.messages) == 2
        else:
            assert not first_ok
        if tr.kind == "control":
            assert users[1:] == [prompts.DEFAULT_RETRY_NO_REFLECTION]
        if tr.kind in ("reflect", "skill"):
            assert users[1:] == [prompts.DEFAULT_REFLECT, prompts.DEFAULT_RETRY]
            reflection, retry = tr.messages[3]["content"], tr.messages[5]["content"]
            if reflection.startswith(WORKING_PREFIX):
                assert reflection == column_working(ex["a"], ex["b"])
                assert task.verify(ex, retry).ok
            else:
                assert reflection in GENERIC_REFLECTIONS
    assert set(kinds) == {"first", "drill", "single", "reflect", "control", "skill"}


def _masked_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


@pytest.mark.parametrize("kind_cfg", [TraceConfig(first_share=0.0, drill_share=0.0, skill_share=0.0),
                                      TraceConfig(first_share=0.0, drill_share=0.0, skill_share=1.0),
                                      TraceConfig()])
def test_loss_mask_covers_exactly_assistant_content_and_end_of_turn(tok, kind_cfg: TraceConfig) -> None:
    task, rng = AdditionTask(), random.Random(4)
    for ex in task.load_examples("train", n=60, seed=1):
        tr = sample_trace(task, ex, rng, kind_cfg)
        ids, mask = render_trace(tok, tr)
        assert len(ids) == len(mask)
        assert tok.decode(ids) == prompts.render(tok, tr.messages, add_generation_prompt=False)
        expected = [m["content"][start:] + "<|im_end|>"
                    for m, start in zip(tr.messages, tr.loss_start) if start is not None]
        got = [tok.decode(span) for span in _masked_spans(ids, mask)]
        assert got == expected
        if tr.kind == "skill":
            # the style-choosing opening and the failed attempt are not trained on
            assert expected[0].startswith(" ") and not any(WORKING_PREFIX in g for g in got)
            assert tr.loss_start[1] is None


def test_chatml_rendering_of_a_trace(tok) -> None:
    msgs = [{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "<answer>3</answer>"}]
    text = prompts.render(tok, msgs, add_generation_prompt=False)
    assert text == ("<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n"
                    "<|im_start|>assistant\n<answer>3</answer><|im_end|>\n")


# -------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def demo():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (ASSET / "model.safetensors").is_file():
        pytest.fail(f"the demo model is missing from {ASSET}; build it with python -m r3rl.demo.pretrain")
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(ASSET)
    model = AutoModelForCausalLM.from_pretrained(ASSET, dtype=torch.float32).eval()
    return tok, model


def test_asset_is_small_and_complete() -> None:
    names = {p.name for p in ASSET.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in ASSET.iterdir()) <= 8 * 2**20


def test_asset_template_is_chatml(demo) -> None:
    tok, model = demo
    assert model.config.model_type == "qwen2"
    msgs = [{"role": "user", "content": "What is 1 + 2?"}]
    assert prompts.render(tok, msgs) == "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"
    assert all(len(tok.encode(str(d), add_special_tokens=False)) == 1 for d in range(10))


def test_asset_working_reflections_are_correct_and_copied(demo) -> None:
    """Both behaviours exist: forced working is right >= 80% of the time, and the retry copies its sum."""
    from r3rl.demo.pretrain import FORCED_PREFIX, generate_texts, working_is_correct

    tok, model = demo
    task = AdditionTask()
    examples = task.load_examples("test", n=50, seed=7)
    rng = random.Random(7)
    convs = [task.messages(ex) + [
        {"role": "assistant", "content": f"<answer>{sloppy_answer(ex['a'], ex['b'], rng, 0.0)}</answer>"},
        {"role": "user", "content": prompts.DEFAULT_REFLECT}] for ex in examples]
    prefix = tok(FORCED_PREFIX, add_special_tokens=False)["input_ids"]
    outs = generate_texts(model, tok, [prompts.encode(tok, c) + prefix for c in convs], 64, 0.0)
    reflections = [FORCED_PREFIX + o for o in outs]
    right = [working_is_correct(ex, r) for ex, r in zip(examples, reflections)]
    assert sum(right) >= 40, reflections[:5]

    retry_convs = [c + [{"role": "assistant", "content": r}, {"role": "user", "content": prompts.DEFAULT_RETRY}]
                   for c, r, ok in zip(convs, reflections, right) if ok]
    retries = generate_texts(model, tok, [prompts.encode(tok, c) for c in retry_convs], 12, 0.0)
    copied = [task.verify(ex, r).ok for ex, r, in zip([e for e, ok in zip(examples, right) if ok], retries)]
    assert sum(copied) >= 0.9 * len(copied), retries[:5]


def test_asset_samples_both_reflection_styles(demo) -> None:
    """At temperature 1 after a failure, most reflections are generic and some are working (about 1 in 4)."""
    import torch

    from r3rl.demo.pretrain import FORCED_PREFIX, generate_texts

    tok, model = demo
    task = AdditionTask()
    examples = task.load_examples("test", n=80, seed=11)
    rng = random.Random(11)
    convs = [task.messages(ex) + [
        {"role": "assistant", "content": f"<answer>{sloppy_answer(ex['a'], ex['b'], rng, 0.0)}</answer>"},
        {"role": "user", "content": prompts.DEFAULT_REFLECT}] for ex in examples]
    torch.manual_seed(11)
    reflections = generate_texts(model, tok, [prompts.encode(tok, c) for c in convs], 64, 1.0)
    working = sum(r.startswith(FORCED_PREFIX) for r in reflections)
    generic = sum(r in GENERIC_REFLECTIONS for r in reflections)
    # Binomial(80, 0.24): mean 19, sd 3.8; the bounds sit about 3 sd out.
    assert 7 <= working <= 32, reflections
    assert generic >= 40, reflections
