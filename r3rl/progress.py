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
    line moves during a long chunk instead of only when a chunk ends. A disabled bar
    installs no hook and costs nothing.
    """

    def __init__(self, engine, total: int, initial: int = 0, desc: str = "", disable: bool = False,
                 min_interval: float = 0.5):
        self.engine = engine
        self.disable = disable
        self.bar = progress_bar(total=total, initial=initial, desc=desc, disable=disable)
        self.tokens = 0
        self.name = ""
        self.info: dict = {}
        self.min_interval = min_interval
        self._start = self._shown = 0.0
        self._previous_hook = None

    def __enter__(self) -> "GenerationProgress":
        import time

        self._start = time.perf_counter()
        if not self.disable:
            self._previous_hook = getattr(self.engine, "on_tokens", None)
            self.engine.on_tokens = self._on_tokens
        return self

    def __exit__(self, *exc) -> None:
        if not self.disable:
            self.engine.on_tokens = self._previous_hook
        self.bar.close()

    def stage(self, name: str) -> None:
        self.name = name
        self._show(force=True)

    def update(self, n: int, **info) -> None:
        self.info.update(info)
        self.bar.update(n)
        self._show(force=True)

    def _on_tokens(self, n: int) -> None:
        self.tokens += n
        self._show()

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
