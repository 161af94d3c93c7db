"""Logging a few whole episodes as text to the experiment trackers (TensorBoard, Weights & Biases).

The numbers of every step reach the trackers through `Accelerator.log` in the
trainer (the same figures as metrics.jsonl). Numbers alone do not show *what*
the model reflects, so each step the first few episodes (the ones also written
to episodes.jsonl) go to the trackers as text: TensorBoard gets one Markdown
entry per step under `episodes/reflections` (its Text tab), W&B a Table
`episodes/reflections` with one row per episode. Other trackers have no text
view that accelerate exposes and are skipped.
"""

from __future__ import annotations

from typing import Any, Sequence

from r3rl.types import Episode

__all__ = ["log_episode_texts", "episodes_markdown", "TEXT_TAG", "TABLE_COLUMNS"]

TEXT_TAG = "episodes/reflections"
TABLE_COLUMNS = ["example_id", "attempt", "attempt_reason", "reflection", "retry", "retry_ok", "reward", "advantage"]
#: characters kept of each text (a runaway reflection would otherwise bloat the event file every step)
MAX_CHARS = 2_000


def _clip(text: str, limit: int = MAX_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters]"


def _fence(text: str) -> str:
    """A Markdown code block that the text itself cannot close (its longest backtick run + 1)."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def episodes_markdown(episodes: Sequence[Episode]) -> str:
    """The episodes as Markdown: a header line of facts, then the failed attempt, the reflection and the retry."""
    parts = []
    for i, e in enumerate(episodes, start=1):
        parts.append(
            f"### Episode {i}: example `{e.example_id}`, reward {e.reward:g}, advantage {e.advantage:+.3f}, "
            f"retry {'passed' if e.retry_ok else 'failed'}\n\n"
            f"**Failed attempt** ({_clip(e.attempt_reason, 200) or 'no reason given'})\n\n{_fence(_clip(e.attempt_text))}\n\n"
            f"**Reflection**\n\n{_fence(_clip(e.reflection_text))}\n\n"
            f"**Retry** ({_clip(e.retry_reason, 200) or ('passed' if e.retry_ok else 'failed')})\n\n{_fence(_clip(e.retry_text))}"
        )
    return "\n\n".join(parts)


def _rows(episodes: Sequence[Episode]) -> list[list[Any]]:
    return [[e.example_id, _clip(e.attempt_text), e.attempt_reason, _clip(e.reflection_text), _clip(e.retry_text),
             bool(e.retry_ok), float(e.reward), float(e.advantage)] for e in episodes]


def log_episode_texts(accelerator: Any, episodes: Sequence[Episode], step: int) -> None:
    """Send `episodes` as text to each of the accelerator's trackers that can show text; call on the main process."""
    if not episodes:
        return
    for tracker in getattr(accelerator, "trackers", []):
        if tracker.name == "tensorboard":
            tracker.writer.add_text(TEXT_TAG, episodes_markdown(episodes), global_step=step)
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_table(TEXT_TAG, columns=TABLE_COLUMNS, data=_rows(episodes), step=step)
