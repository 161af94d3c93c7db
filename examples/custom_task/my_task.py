"""A minimal custom task: reverse a word, answer inside <answer></answer> tags.

This is the whole contract a task must meet (see r3rl/tasks/base.py):

    load_examples(split, n, seed) -> list of JSON-serialisable dicts
    prompt(example)               -> the user's first-turn text
    verify(example, completion)   -> Verdict(ok, reason); never raises, always fast

Optional: `system_prompt` (a class attribute) and `tools(example)` for tool use.
Constructor keyword arguments are the task's options: `load_task(path, **options)`
passes them through, so `load_task("examples.custom_task.my_task:MyTask",
min_length=6)` builds `MyTask(min_length=6)`.

Load it with:

    from r3rl.tasks import load_task
    task = load_task("examples.custom_task.my_task:MyTask")
"""

from __future__ import annotations

import random

from r3rl.tasks import Example, Task, Verdict

WORDS = (
    "apple banana cherry dragon engine forest garden harbor island jacket kettle lantern meadow "
    "needle orange pepper quartz rabbit saddle timber umbrella velvet walnut yellow zipper "
    "bridge candle dolphin falcon glacier hammer insect jungle kitten ladder mirror nectar "
    "oyster pillow quiver ribbon silver tunnel violin window"
).split()

# Bounds what verify() looks at, so a megabyte of output costs no more than a word.
MAX_ANSWER_CHARS = 100


class MyTask(Task):
    """Reverse the letters of a word. Options: min_length (shortest word used), test_fraction."""

    name = "reverse_word"
    system_prompt = "You are a careful assistant. Follow the answer format exactly."

    def __init__(self, min_length: int = 5, test_fraction: float = 0.2):
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.words = sorted(w for w in WORDS if len(w) >= min_length)
        if len(self.words) < 2:
            raise ValueError(f"min_length={min_length} leaves fewer than 2 words")
        # A fixed, disjoint split: the last test_fraction of the sorted words are the test set.
        cut = len(self.words) - max(1, round(test_fraction * len(self.words)))
        self.splits = {"train": self.words[:cut], "test": self.words[cut:]}

    def load_examples(self, split: str = "train", n: int | None = None, seed: int = 0) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        words = list(self.splits[split])
        random.Random(seed).shuffle(words)
        return [{"id": f"reverse-{w}", "word": w} for w in words[:n]]

    def prompt(self, example: Example) -> str:
        return (f"Write the word '{example['word']}' backwards, letter by letter. "
                "Put only the reversed word inside <answer></answer> tags.")

    def verify(self, example: Example, completion: str) -> Verdict:
        # The last answer block counts, so the model may think aloud before it.
        end = completion.rfind("</answer>")
        start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
        if start < 0:
            return Verdict(False, "no <answer>...</answer> block")
        answer = completion[start + len("<answer>"):end].strip()
        if len(answer) > MAX_ANSWER_CHARS:
            return Verdict(False, f"answer too long ({len(answer)} characters)")
        expected = example["word"][::-1]
        if answer.lower() != expected:
            return Verdict(False, f"expected {expected!r}, got {answer!r}")
        return Verdict(True, "correct")
