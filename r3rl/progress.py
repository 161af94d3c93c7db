"""Progress bars and terminal output in one place (tqdm; silent on non-main ranks)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", disable: bool = False, **kw):
    return tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, file=sys.stderr, **kw)


def print_table(table) -> None:
    from rich.console import Console

    Console().print(table)
