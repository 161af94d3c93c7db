"""Synthetic conversation traces that give the demo model its starting behaviour.

This is a controlled miniature of the paper's mechanism, not a claim about
natural models. A tiny model is pre-trained on whole chat conversations that
follow r3rl's own reflect/retry protocol (r3rl.environment.prompts' default instructions,
the task's prompt, no system prompt), so that:

* its first attempt is sloppy: right with probability `p_correct`, otherwise a
  realistic slip (a dropped carry, a digit off by one);
* after a failure, its reflection is usually generic and useless ("I made a
  mistake. I should be more careful."), and sometimes (`p_working`) it writes
  out correct column-by-column working, its reliable slow path;
* its retry copies the sum after a working reflection, and is as sloppy as the
  first attempt after a generic one or with no reflection at all.

GRPO on the reflection tokens can then raise the share of working reflections,
which is what the demo shows. Traces come in four kinds:

    first    user(task) -> assistant(first attempt, right or wrong)
    single   user(task) -> assistant(correct first attempt)
    reflect  ... failed attempt, user(reflect) -> assistant(reflection), user(retry) -> assistant(retry)
    control  ... failed attempt, user(retry without reflection) -> assistant(retry)
    skill    a `reflect` trace with a working reflection whose style-deciding
             prefix and failed first attempt carry no loss (see TraceConfig.skill_share)
    drill    user("Add a and b column by column.") -> assistant(column working)

The protocol traces (single / reflect / control) end after a correct first
attempt, so the first-attempt tokens, which carry loss in every kind but
`skill`, are drawn from the sloppy distribution without any conditioning on
failure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from r3rl.environment import prompts
from r3rl.tasks.base import Example, Task

Message = dict[str, Any]

WORKING_PREFIX = "Let me add column by column."
# The user turn of `drill` traces; deliberately unlike the task prompt.
DRILL_PROMPT = "Add {a} and {b} column by column."

# Paraphrases of a useless reflection. None starts with "Let me", so the
# reflection's first tokens tell the two styles apart.
GENERIC_REFLECTIONS: tuple[str, ...] = (
    "I made a mistake. I should be more careful.",
    "My answer was wrong. I need to be more careful next time.",
    "I think I made an arithmetic error. I will check my work.",
    "The answer I gave was not correct. I should pay more attention.",
    "I was too quick. I should slow down and be careful.",
    "I made an error in the sum. I will try to be more accurate.",
    "My calculation was wrong. I need to focus more.",
    "I got the addition wrong. I should double check my answer.",
)


@dataclass(frozen=True)
class TraceConfig:
    """Probabilities that shape the starting behaviour of the demo model."""

    p_correct: float = 0.35
    """Chance that a first attempt, a retry after a generic reflection, or a control retry is right."""
    p_working: float = 0.25
    """Share of reflections (after a failure) that write out column-by-column working."""
    p_control: float = 0.2
    """Share of failed first attempts continued with a retry-without-reflection turn instead."""
    first_share: float = 0.15
    """Share of `first` traces: a lone first attempt, right or wrong. Short (about 45
    tokens), so they teach the first attempt cheaply, without any conditioning."""
    drill_share: float = 0.25
    """Share of `drill` traces: user(DRILL_PROMPT) -> assistant(column working). Short and
    dense in arithmetic, they teach the column sums and carries cheaply; their prompt
    is not the task's, so they do not change what the model does in the protocol."""
    skill_share: float = 0.35
    """Share of `skill` traces. They teach the arithmetic of the working style
    without moving the style's prior: the tokens that choose the style (the
    reflection's opening sentence) and the failed attempt get no loss."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TraceConfig.{name} must be in [0, 1], got {value}")
        if self.first_share + self.drill_share + self.skill_share > 1.0:
            raise ValueError("first_share + drill_share + skill_share must be at most 1 (the rest are protocol traces)")


@dataclass
class Trace:
    """One conversation and, per message, where its loss starts.

    loss_start[i] is None for no loss on message i (always so for user turns),
    else the character offset into message i's content from which the content
    (and the end-of-turn token after it) is trained on.
    """

    kind: str
    messages: list[Message]
    loss_start: list[int | None] = field(default_factory=list)


# --------------------------------------------------------------------- arithmetic
def _digits_lsb_first(n: int, width: int) -> list[int]:
    return [(n // 10**i) % 10 for i in range(width)]


def column_working(a: int, b: int) -> str:
    """Correct column-by-column addition from the units digit, e.g. for 347 + 285:

    "Let me add column by column. 347 + 285: 7+5=12, write 2 carry 1. 4+8+1=13, write 3 carry 1. 3+2+1=6.
    The sum is 632."

    The operands are restated first on purpose: copying them is an easy induction
    step, and it puts each column's digits a short, nearly fixed distance behind
    the place they are needed, which a tiny model learns far faster than finding
    them in the task prompt a hundred tokens back (measured: without the
    restatement an 0.9M-parameter model had 0% correct working after 500 steps).
    """
    if a < 0 or b < 0:
        raise ValueError(f"column working is for non-negative operands, got {a} and {b}")
    width = max(len(str(a)), len(str(b)))
    da, db = _digits_lsb_first(a, width), _digits_lsb_first(b, width)
    parts = [WORKING_PREFIX, f"{a} + {b}:"]
    carry = 0
    for i in range(width):
        s = da[i] + db[i] + carry
        expr = f"{da[i]}+{db[i]}" + ("+1" if carry else "")
        if i < width - 1:
            parts.append(f"{expr}={s}, write {s % 10}" + (" carry 1." if s >= 10 else "."))
        else:
            parts.append(f"{expr}={s}.")
        carry = s // 10
    parts.append(f"The sum is {a + b}.")
    return " ".join(parts)


def dropped_carry(a: int, b: int, rng: random.Random) -> int | None:
    """a + b with one of its carries forgotten (None when the sum has no carry)."""
    width = max(len(str(a)), len(str(b)))
    da, db = _digits_lsb_first(a, width), _digits_lsb_first(b, width)
    carry, carry_cols = 0, []
    for i in range(width):
        s = da[i] + db[i] + carry
        carry = s // 10
        if carry:
            carry_cols.append(i)
    if not carry_cols:
        return None
    # Forgetting the carry out of column i is the same as subtracting 10**(i+1).
    return a + b - 10 ** (rng.choice(carry_cols) + 1)


def digit_off_by_one(n: int, rng: random.Random) -> int:
    """n with one decimal digit moved up or down by one (never a new leading zero, never negative)."""
    digits = [int(c) for c in str(n)]
    while True:
        i = rng.randrange(len(digits))
        d = digits[i] + rng.choice((-1, 1))
        if 0 <= d <= 9 and not (i == 0 and d == 0 and len(digits) > 1):
            out = digits.copy()
            out[i] = d
            return int("".join(map(str, out)))


def sloppy_answer(a: int, b: int, rng: random.Random, p_correct: float) -> int:
    """An answer from a model that adds at once: right with p_correct, else a plausible slip."""
    s = a + b
    if rng.random() < p_correct:
        return s
    if rng.random() < 0.5:
        slip = dropped_carry(a, b, rng)
        if slip is not None:
            return slip
    return digit_off_by_one(s, rng)


def answer_text(n: int) -> str:
    return f"<answer>{n}</answer>"


# -------------------------------------------------------------------------- traces
def sample_trace(task: Task, example: Example, rng: random.Random, cfg: TraceConfig = TraceConfig()) -> Trace:
    """One synthetic conversation about `example`, drawn from the starting behaviour."""
    a, b = int(example["a"]), int(example["b"])
    s = a + b
    msgs: list[Message] = [{"role": "user", "content": task.prompt(example)}]
    loss: list[int | None] = [None]

    def say(role: str, content: str, loss_from: int | None) -> None:
        msgs.append({"role": role, "content": content})
        loss.append(loss_from)

    kind_draw = rng.random()
    if kind_draw < cfg.first_share:
        say("assistant", answer_text(sloppy_answer(a, b, rng, cfg.p_correct)), 0)
        return Trace("first", msgs, loss)
    kind_draw -= cfg.first_share
    if kind_draw < cfg.drill_share:
        drill: list[Message] = [{"role": "user", "content": DRILL_PROMPT.format(a=a, b=b)},
                                {"role": "assistant", "content": column_working(a, b)}]
        return Trace("drill", drill, [None, 0])
    kind_draw -= cfg.drill_share
    if kind_draw < cfg.skill_share:
        wrong = sloppy_answer(a, b, rng, p_correct=0.0)
        say("assistant", answer_text(wrong), None)
        say("user", prompts.DEFAULT_REFLECT, None)
        say("assistant", column_working(a, b), len(WORKING_PREFIX))
        say("user", prompts.DEFAULT_RETRY, None)
        say("assistant", answer_text(s), 0)
        return Trace("skill", msgs, loss)

    first = sloppy_answer(a, b, rng, cfg.p_correct)
    say("assistant", answer_text(first), 0)
    if first == s:
        return Trace("single", msgs, loss)
    if rng.random() < cfg.p_control:
        say("user", prompts.DEFAULT_RETRY_NO_REFLECTION, None)
        say("assistant", answer_text(sloppy_answer(a, b, rng, cfg.p_correct)), 0)
        return Trace("control", msgs, loss)
    say("user", prompts.DEFAULT_REFLECT, None)
    if rng.random() < cfg.p_working:
        say("assistant", column_working(a, b), 0)
        retry = s
    else:
        say("assistant", rng.choice(GENERIC_REFLECTIONS), 0)
        retry = sloppy_answer(a, b, rng, cfg.p_correct)
    say("user", prompts.DEFAULT_RETRY, None)
    say("assistant", answer_text(retry), 0)
    return Trace("reflect", msgs, loss)


# ----------------------------------------------------------------------- rendering
def render_trace(tokenizer, trace: Trace) -> tuple[list[int], list[int]]:
    """Token ids of the whole templated conversation and a 0/1 loss mask over them.

    The mask is 1 on each trained assistant message's content (from its
    loss_start) and on the end-of-turn token the template puts right after it;
    0 on everything else (user turns, role headers, newlines between turns).
    Spans are found by rendering prefixes of the conversation with the model's
    own template, so nothing here assumes ChatML beyond "an assistant turn ends
    with the tokenizer's eos token".
    """
    msgs = trace.messages
    text = prompts.render(tokenizer, msgs, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []  # character [start, end) ranges that carry loss
    eos = tokenizer.eos_token
    for i, (msg, loss_from) in enumerate(zip(msgs, trace.loss_start)):
        if loss_from is None:
            continue
        if msg["role"] != "assistant":
            raise ValueError(f"message {i} is a {msg['role']!r} turn; only assistant turns carry loss")
        head = prompts.render(tokenizer, msgs[:i], add_generation_prompt=True)
        if not text.startswith(head + msg["content"] + eos):
            raise ValueError(f"the chat template does not render message {i} as header + content + {eos!r}")
        start = len(head) + loss_from
        spans.append((start, len(head) + len(msg["content"]) + len(eos)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    mask = [0] * len(ids)
    for t, (lo, hi) in enumerate(enc["offset_mapping"]):
        for s_lo, s_hi in spans:
            inside = s_lo <= lo and hi <= s_hi
            if inside:
                mask[t] = 1
            elif lo < s_hi and s_lo < hi:
                raise ValueError(f"token {t} ({text[lo:hi]!r}) straddles a loss-span boundary")
    return ids, mask


def trace_corpus(task: Task, n: int, seed: int, cfg: TraceConfig = TraceConfig()) -> list[str]:
    """Plain texts of n traces, to train the tokenizer's merges on (no templating needed)."""
    rng = random.Random(f"corpus/{seed}")
    examples = task.load_examples("train", n=n, seed=seed)
    return ["\n".join(m["content"] for m in sample_trace(task, ex, rng, cfg).messages) for ex in examples]
