"""The offline demo: a tiny model built for it, its `addition` task, one config, the pipeline.

Nothing in the core knows about the demo: it registers the `demo` model alias and the
`addition` task through the `r3rl.models` / `r3rl.tasks` entry points (pyproject.toml),
the same hooks a user's package has.
"""

from pathlib import Path


def model_path() -> str:
    """The shipped demo model folder (how it was made: r3rl/demo/model/README.md)."""
    return str(Path(__file__).with_name("model"))
