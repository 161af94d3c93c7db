"""The report's building blocks: format-free headings, paragraphs, tables, images and code.

document.py and the section modules build lists of them; render.py turns a list into Markdown
and HTML, so the two files cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Heading:
    kind: ClassVar[str] = "heading"
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    kind: ClassVar[str] = "para"
    text: str
    style: str = ""  # "" | "note" (missing data) | "warning" (the run is suspect) | "verdict" (headline)


@dataclass(frozen=True)
class TableBlock:
    kind: ClassVar[str] = "table"
    header: list[str]
    rows: list[list[str]]
    long_text: bool = False  # cells hold multi-line model output


@dataclass(frozen=True)
class Image:
    kind: ClassVar[str] = "image"
    name: str  # file stem under report/
    caption: str
    png: bytes


@dataclass(frozen=True)
class Code:
    kind: ClassVar[str] = "code"
    summary: str
    text: str


Block = Heading | Para | TableBlock | Image | Code
