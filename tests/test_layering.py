"""Every import inside r3rl points down the layer order of docs/design.md, and no imports run in a circle.

Data flows one way: task -> prompts -> engine -> rollout -> mining -> training -> evaluation ->
reporting; the imports follow it, except that evaluation sits below training (see below). A module may import modules of its own layer or of a layer below, never one above. Every
`import r3rl...` counts, at module level or inside a function: a lazy import still ties the two
modules together.

Placement of the modules docs/design.md does not name:
    errors                 core: the error types, used from config up
    runtime                core: what every stage runs on: io, file_checks (the damaged-file checks),
                           distributed, seeds, progress, and chunks (the sharded, resumable chunk
                           runner of mining and evaluation); it imports errors and itself only
    checks                 right above tasks: `r3rl check-task` drives a task's verifier and needs nothing else
    engine/factory.py      inside engine (it only picks an engine class)
    environment            above engine: the rollout (environment/rollout.py), its prompts
                           (environment/prompts.py) and its assembly from the config
                           (environment/stack.py: model, engine and Rollout, for mining, training,
                           evaluation, the CLI and the demo)
    engine/provenance.py   inside engine: what made a failure set or a checkpoint (model files or
                           weights), read through the engine's loading
    evaluation < training  evaluation needs only the rollout; the trainer evaluates periodically and
                           logs the reflection diagnostics of evaluation/diagnostics.py each step, so
                           evaluation sits below training (docs/design.md's data flow runs the other way,
                           its imports this way)
    api                    right below the commands: what `r3rl mine/eval/train/report` do, as functions
                           (the commands call them)
    training/plan.py       inside training: `r3rl plan` sizes a training run (config and engine only)
    cli, demo, __main__    the top: commands and the demo may use everything
    r3rl (the package's __init__)  core: the version; the API's names are looked up by string on first use

To place a new module or package, add its name to a layer of LAYERS (a new layer is a new row).
An arrow that runs upward today and is being removed by other work goes in KNOWN_UPWARD with the
reason; the test fails as soon as such an arrow is gone, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "r3rl"

# Lowest layer first. A unit is a top-level module or package of r3rl (r3rl/engine/hf.py -> "engine").
LAYERS: list[tuple[str, ...]] = [
    ("r3rl", "config", "types", "errors", "runtime"),
    ("tasks",),
    ("checks",),
    ("engine",),
    ("environment",),
    ("mining",),
    ("evaluation",),
    ("training",),
    ("reporting",),
    ("integrations",),
    ("api",),
    ("cli", "demo", "__main__"),
]

# (importer unit, imported unit): why it is still there. Remove the entry when the arrow goes.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every r3rl module `path` imports (module level and inside functions), as dotted names."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # `from r3rl import tasks` imports the module r3rl.tasks, not only the package
            found.update(f"{name}.{a.name}" for a in node.names if _is_module(f"{name}.{a.name}"))
    return {m for m in found if m == "r3rl" or m.startswith("r3rl.")}


def _is_module(dotted: str) -> bool:
    p = PACKAGE.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "r3rl"


def import_graph() -> dict[str, set[str]]:
    """module -> the r3rl modules it imports (only names that exist as modules or packages)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[module_name(path)] = {m for m in imports_of(path) if _is_module(m)} - {module_name(path)}
    return graph


def layer_of() -> dict[str, int]:
    return {name: i for i, names in enumerate(LAYERS) for name in names}


def test_every_unit_has_a_layer():
    units = {unit(m) for m in import_graph()}
    missing = sorted(units - set(layer_of()))
    assert not missing, f"place these in LAYERS (tests/test_layering.py): {missing}"


def upward_arrows() -> dict[tuple[str, str], list[str]]:
    level = layer_of()
    up: dict[tuple[str, str], list[str]] = defaultdict(list)
    for mod, targets in import_graph().items():
        for t in targets:
            a, b = unit(mod), unit(t)
            if a in level and b in level and level[b] > level[a]:
                up[(a, b)].append(f"{mod} -> {t}")
    return dict(up)


def test_no_module_imports_one_above_it():
    up = upward_arrows()
    new = {k: v for k, v in up.items() if k not in KNOWN_UPWARD}
    assert not new, "imports that run up the layers (docs/design.md):\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(sorted(v))}" for (a, b), v in sorted(new.items()))
    gone = sorted(set(KNOWN_UPWARD) - set(up))
    assert not gone, f"these arrows are gone: remove them from KNOWN_UPWARD: {gone}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_between_units():
    units: dict[str, set[str]] = defaultdict(set)
    for mod, targets in import_graph().items():
        units[unit(mod)].update(unit(t) for t in targets if unit(t) != unit(mod))
    assert _cycles(units) == []


def test_no_import_circles_between_modules():
    """A package's __init__ re-exporting its modules is not a circle: a module importing its own
    package's __init__ is left out (it is how `from r3rl.tasks import Task` inside r3rl.tasks works)."""
    graph = import_graph()
    pruned = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    assert _cycles(pruned) == []


def test_the_checker_sees_every_kind_of_import_and_a_circle():
    """The machinery above on made-up input, so a parser that misses imports cannot pass silently."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = ("import r3rl.environment.rollout\nfrom r3rl import tasks, __version__\nfrom . import base\n"
              "def g():\n    from r3rl.engine.hf import HFEngine\n    from ..mining import mine\n")
    got = imports_in(source, "r3rl.engine.x", is_package=False)
    assert {"r3rl.environment.rollout", "r3rl.tasks", "r3rl.engine", "r3rl.engine.hf", "r3rl.mining"} <= got
    assert "r3rl.__version__" not in got
    assert {unit(m) for m in got} >= {"environment", "tasks", "engine", "mining"}


def test_every_cited_document_is_in_the_repository():
    """A docs/*.md or top-level *.md (README.md, BENCHMARKS.md) named in the code, tests or examples exists:
    the design the code refers to is docs/design.md, in the repository (an upper-case design file was cited and missing)."""
    import re

    root = PACKAGE.parent
    cited = re.compile(r"(?<![\w/.-])(docs/[\w-]+\.md|[A-Z][A-Z_]+\.md)\b")
    missing = set()
    for folder in ("r3rl", "tests", "examples"):
        for path in (root / folder).rglob("*.py"):
            for name in cited.findall(path.read_text(encoding="utf-8")):
                if not (root / name).exists():
                    missing.add(f"{path.relative_to(root)}: {name}")
    assert not missing, "\n".join(sorted(missing))
