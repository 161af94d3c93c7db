"""The reliability suite: every test here is marked `reliability`.

`pytest` (CI) runs the short version. `make reliability` runs the long one (R3RL_RELIABILITY=long):
more kill points per command and 100,000 hostile completions per task. The long kill tests record
their figures in runs/reliability/kills.json (what RELIABILITY.md quotes).
"""

from __future__ import annotations

import os

import pytest

LONG = os.environ.get("R3RL_RELIABILITY", "short") == "long"


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.reliability)
