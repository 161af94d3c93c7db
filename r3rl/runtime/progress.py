"""Progress bars and terminal output in one place (tqdm; silent on non-main ranks)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", disable: bool = False, **kw):
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, file=sys.stderr, **kw)


def print_table(table) -> None:
    from rich.console import Console

    Console().print(table)


class GenerationProgress:
    """A bar over examples whose text follows generation as it happens: the stage, tokens, tokens/s.

    While open it is the engine's `on_tokens` hook (called once per decoding step), so the
    line moves during a long chunk instead of only when a chunk ends, and its `on_generated`
    hook (called per finished generation), so the bar itself moves inside a chunk: a chunk of k
    examples done in S stages (`chunk`) advances k / S over each stage (`stage`) in proportion to
    the stage's generations finished, or to its tokens against its token limit when that is
    further (rows of one batch decode together and finish together), which gives tqdm a rate and
    a time estimate from the first decoding steps on. The count is in examples' worth of work (5.3/12); `update` sets it to the examples
    finished when chunks end. A disabled bar installs no hook and costs nothing. It only watches:
    no result or seed depends on it.
    """

    def __init__(self, engine, total: int, initial: int = 0, desc: str = "", disable: bool = False,
                 min_interval: float = 0.5):
        self.engine = engine
        self.disable = disable
        self.bar = progress_bar(total=total, initial=initial, desc=desc, disable=disable,
                                bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        self.tokens = 0
        self.name = ""
        self.info: dict = {}
        self.min_interval = min_interval
        self._start = self._shown = 0.0
        self._previous_hooks: tuple = (None, None)
        self._finished = float(initial)  # examples whose chunk has ended
        self._chunk = (0.0, 0, 1)  # (examples finished when it started, its examples, its stages)
        self._stage = (-1, 0, 0)  # (index in the chunk, generations expected, generations finished)
        self._stage_tokens = (0, 0)  # (the stage's token limit: generations x max new tokens, tokens so far)

    def __enter__(self) -> "GenerationProgress":
        import time

        self._start = time.perf_counter()
        if not self.disable:
            self._previous_hooks = (getattr(self.engine, "on_tokens", None), getattr(self.engine, "on_generated", None))
            self.engine.on_tokens, self.engine.on_generated = self._on_tokens, self._on_generated
        return self

    def __exit__(self, *exc) -> None:
        if not self.disable:
            self.engine.on_tokens, self.engine.on_generated = self._previous_hooks
        self.bar.close()

    def chunk(self, examples: int, stages: int) -> None:
        """A chunk of `examples` starts on this process, done in up to `stages` stages (calls of `stage`)."""
        self._chunk = (self._finished, examples, max(stages, 1))
        self._stage = (-1, 0, 0)

    def stage(self, name: str, generations: int = 0, tokens: int = 0) -> None:
        """The next stage of the chunk starts: `generations` finished generations complete it, as would
        `tokens` generated (its upper bound: every generation at its limit); 0 = unknown."""
        self.name = name
        self._move(self._stage[0] + 1)
        self._stage = (self._stage[0] + 1, generations, 0)
        self._stage_tokens = (tokens, 0)
        self._show(force=True)

    def update(self, n: int, **info) -> None:
        """`n` more examples are finished (chunks ended, on any process)."""
        self.info.update(info)
        self._finished += n
        self._stage = (-1, 0, 0)
        self._advance_to(self._finished)
        self._show(force=True)

    def _on_tokens(self, n: int) -> None:
        self.tokens += n
        limit, made = self._stage_tokens
        self._stage_tokens = (limit, made + n)
        self._stage_moved()
        self._show()

    def _on_generated(self, n: int) -> None:
        index, expected, done = self._stage
        self._stage = (index, expected, done + n)
        self._stage_moved()

    def _stage_moved(self) -> None:
        index, expected, done = self._stage
        limit, made = self._stage_tokens
        if index >= 0:
            self._move(index + min(max(done / expected if expected else 0.0, made / limit if limit else 0.0), 1.0))

    def _move(self, stages_done: float) -> None:
        """To `stages_done` of the current chunk's stages (never past the chunk's end, never back)."""
        base, examples, stages = self._chunk
        self._advance_to(base + examples * min(max(stages_done, 0.0) / stages, 1.0))

    def _advance_to(self, n: float) -> None:
        if not self.disable and n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def _show(self, force: bool = False) -> None:
        if self.disable:
            return
        import time

        now = time.perf_counter()
        if not force and now - self._shown < self.min_interval:
            return
        self._shown = now
        rate = self.tokens / max(now - self._start, 1e-9)
        extra = "".join(f", {k}={v}" for k, v in self.info.items())
        self.bar.set_postfix_str(f"{self.name}: {self.tokens} tokens, {rate:.0f} tok/s{extra}")
