"""Rendering report blocks (document.py) to Markdown and to one self-contained HTML file.

The layout lives in templates/report.md.j2 and templates/report.html.j2 (shipped in the
wheel as package data); this module only sets up jinja2 and the filters they use. HTML is
autoescaped; Markdown escapes through its own filters, because model output holds tags
like <answer> that a Markdown viewer would otherwise swallow. Markdown is also read as plain
text, so it escapes with backslashes, and only what a viewer would take as markup: a `<` that
opens a tag or comment, a `&` that starts an entity ("p < 0.0001" stays as written).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from functools import lru_cache

import jinja2

from r3rl.reporting.blocks import Block, Image


# CommonMark raw HTML starts with `<` then a letter, `/`, `!` or `?`; an entity is `&name;` or `&#...;`.
_MARKUP = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?\w+;)")


def _md_text(text: str) -> str:
    return _MARKUP.sub(lambda m: "\\" + m.group(0), text)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", "<br>")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("r3rl.reporting", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,  # a misspelt field is an error, not an empty cell
        keep_trailing_newline=True,
        trim_blocks=True,  # templates are line-oriented: a tag line leaves no blank line behind
        lstrip_blocks=True,
    )
    env.filters.update(md_text=_md_text, md_cell=_md_cell, b64=lambda data: base64.b64encode(data).decode("ascii"))
    return env


def render_markdown(blocks: Sequence[Block], image_dir: str = "report") -> str:
    """report.md: images are linked from image_dir (relative to the Markdown file)."""
    return _env().get_template("report.md.j2").render(blocks=blocks, image_dir=image_dir)


def render_html(blocks: Sequence[Block], title: str) -> str:
    """report.html: inline CSS and images as data URIs, nothing fetched from elsewhere."""
    items: list[Block | list[Image]] = []
    for blk in blocks:  # consecutive images share one row of figures
        if isinstance(blk, Image):
            if items and isinstance(items[-1], list):
                items[-1].append(blk)
            else:
                items.append([blk])
        else:
            items.append(blk)
    return _env().get_template("report.html.j2").render(items=items, title=title)
