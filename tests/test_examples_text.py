"""The examples' own text is tested like their code: every repository path, config key and task import
path named in a docstring, comment or README under examples/ exists today (a renamed file or key, or a
deprecated spelling such as `mine.output`, fails here)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from r3rl.config import _RENAMED_KEYS, describe_fields

ROOT = Path(__file__).resolve().parents[1]
TEXTS = sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in (".py", ".md"))

# A path inside this repository: configs/x.yaml, r3rl/demo/demo.yaml, examples/custom_task/my_task.py ...
PATH = re.compile(r"(?<![\w./-])((?:configs|r3rl|examples|tests|requirements|docs|bench)/[\w./-]*[\w-])")
# A config key: section.field (attribute access such as self.task.name and paths are not keys, a call such
# as task.prompt(...) is a method, and failures.jsonl or train.py is a file name)
SECTIONS = "model|task|generation|rollout|failures|train|eval|mine"
KEY = re.compile(rf"(?<![\w./])({SECTIONS})\.([a-z_][\w.]*[a-z_\d])(?![\w(])")
FILE_SUFFIX = re.compile(r"\.(jsonl|json|py|yaml|yml|md|txt|parquet|png|html)$")
# A task import path: package.module:ClassName
IMPORT = re.compile(r"\b((?:examples|r3rl)(?:\.\w+)+):([A-Z]\w*)\b")


def _fields() -> tuple[set[str], set[str]]:
    """Every dotted config field, and those holding a free mapping (task.options.x is any option)."""
    rows = describe_fields()
    names = {name for name, _, _ in rows}
    mappings = {name for name, value, _ in rows if value.startswith("{")}
    return names, mappings


def _named(pattern: re.Pattern, text: str) -> list[re.Match]:
    return list(pattern.finditer(text))


def test_there_are_example_texts():
    assert any(p.name == "README.md" for p in TEXTS) and any(p.name == "train.py" for p in TEXTS)


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_keys_and_import_paths_named_in_examples_exist(path):
    text = path.read_text(encoding="utf-8")
    names, mappings = _fields()
    bad = []
    for m in _named(PATH, text):
        if not (ROOT / m.group(1).rstrip(".")).exists():
            bad.append(f"path {m.group(1)}")
    for m in _named(KEY, text):
        key = f"{m.group(1)}.{m.group(2)}"
        if FILE_SUFFIX.search(key):
            continue
        if key in _RENAMED_KEYS:
            bad.append(f"deprecated key {key} (now {_RENAMED_KEYS[key]})")
        elif key not in names and not any(key.startswith(f"{p}.") for p in mappings):
            bad.append(f"config key {key}")
    for m in _named(IMPORT, text):
        try:
            getattr(importlib.import_module(m.group(1)), m.group(2))
        except (ImportError, AttributeError):
            bad.append(f"import path {m.group(0)}")
    assert not bad, f"{path.relative_to(ROOT)} names what does not exist: {', '.join(bad)}"
