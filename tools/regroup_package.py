#!/usr/bin/env python3
"""Group the r3rl package root by role (issue 26 item 8), on whatever tree it is run in.

    python tools/regroup_package.py            # in the repository root; `--dry-run` only lists

What it does, in order, each step safe to repeat (a second run changes nothing):

1. `git mv` the loose root modules into the package of their role (MOVES below); a new package
   gets an `__init__.py` with a docstring saying what it holds.
2. Rewrites every reference to a moved module in every tracked or new (not ignored) text file,
   by pattern, not by a fixed file list: dotted names (`import r3rl.rollout`, `from r3rl.mining
   import mine`, "r3rl.mining.mine" monkeypatch targets, `-m r3rl.plan`), `from r3rl import
   prompts` lines, paths (`r3rl/rollout.py`), the package trees in Markdown code blocks
   (README.md, docs/design.md), and bare `rollout.py` names in the prose of the Markdown files
   (there they name r3rl's modules; `bench/rollout.py` and other paths are left alone).
3. tests/test_layering.py: LAYERS loses the moved modules and gains the new units, its placement
   list says where the moved modules sit now, and its self-test's made-up source keeps naming
   modules that exist.

At the end it lists bare module file names left in code comments (`rollout.py:183`) for a person
to read: a bare name there may mean another file (bench/rollout.py), so they are not rewritten.
The script itself is never rewritten (it names the old modules on purpose).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

# old module (at the package root) -> its new dotted name. Kept at the root: the vocabulary every
# stage and every user imports (config, types, errors), and the entry points (api, cli, __main__).
MOVES: dict[str, str] = {
    # runtime/: what every stage runs on (files, processes, seeds, progress, the chunk runner)
    "io": "r3rl.runtime.io",
    "file_checks": "r3rl.runtime.file_checks",
    "seeds": "r3rl.runtime.seeds",
    "distributed": "r3rl.runtime.distributed",
    "progress": "r3rl.runtime.progress",
    "chunks": "r3rl.runtime.chunks",
    # environment/: the reflect -> retry rollout, its prompts and its assembly from the config
    "prompts": "r3rl.environment.prompts",
    "rollout": "r3rl.environment.rollout",
    "stack": "r3rl.environment.stack",
    # engine/: what made a failure set or a checkpoint, read through the engine's model loading
    "provenance": "r3rl.engine.provenance",
    # mining/: the failure set
    "mining": "r3rl.mining.failure_set",
    # training/: `r3rl plan` sizes a training run (it needs only the config and the engine's loading)
    "plan": "r3rl.training.plan",
}

NEW_PACKAGES: dict[str, str] = {
    "runtime": '''"""What every stage runs on, below the tasks.

* `io.py`: files written atomically (JSON, JSONL), read back line by line;
* `file_checks.py`: damaged or unsafe files caught before they are loaded, output folders checked;
* `distributed.py`: the processes of a launched run and the work split over them;
* `seeds.py`: seeds derived from their parts, the same in 1 or N processes;
* `progress.py`: progress lines and tables;
* `chunks.py`: the sharded, resumable chunk runner of mining and evaluation.
"""
''',
    "mining": '''"""Mining: the failure set a model trains on, by rejection sampling over the task's examples
(`failure_set.py`: sharded in chunks over processes, resumable, reused only by the model and
settings that mined it). See docs/design.md.
"""
''',
}

# tests/test_layering.py: the new units' rows (a new unit goes into the row of the named unit)
NEW_UNITS_BESIDE = {"runtime": "config"}

# tests/test_layering.py's placement list: an entry about moved modules -> its new text ([] drops it)
PLACEMENT_ENTRIES: dict[str, list[str]] = {
    "errors, file_checks": [
        "    errors                 core: the error types, used from config up",
        "    runtime                core: what every stage runs on: io, file_checks (the damaged-file checks),",
        "                           distributed, seeds, progress, and chunks (the sharded, resumable chunk",
        "                           runner of mining and evaluation); it imports errors and itself only",
    ],
    "chunks": [],
    "stack": [
        "    environment            above engine: the rollout (environment/rollout.py), its prompts",
        "                           (environment/prompts.py) and its assembly from the config",
        "                           (environment/stack.py: model, engine and Rollout, for mining, training,",
        "                           evaluation, the CLI and the demo)",
    ],
    "provenance": [
        "    engine/provenance.py   inside engine: what made a failure set or a checkpoint (model files or",
        "                           weights), read through the engine's loading",
    ],
    "plan, cli, demo, __main__": [
        "    training/plan.py       inside training: `r3rl plan` sizes a training run (config and engine only)",
        "    cli, demo, __main__    the top: commands and the demo may use everything",
    ],
}

SELF = Path(__file__).resolve()
SKIP_SUFFIXES = {".png", ".jpg", ".gif", ".pdf", ".safetensors", ".bin", ".pt", ".gz", ".zip", ".whl", ".ico"}


def git(*args: str, root: Path) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def new_path(old: str) -> str:
    """'rollout' -> 'r3rl/environment/rollout.py'."""
    return MOVES[old].replace(".", "/") + ".py"


def in_package(old: str) -> str:
    """'rollout' -> 'environment/rollout.py' (the path inside r3rl/, as the docs write it)."""
    return new_path(old)[len("r3rl/"):]


# ---- 1. the moves -------------------------------------------------------------------------------

def move_modules(root: Path, dry: bool) -> list[str]:
    done = []
    for pkg, doc in NEW_PACKAGES.items():
        init = root / "r3rl" / pkg / "__init__.py"
        if not init.exists():  # r3rl/mining.py may still be there: it moves into the folder below
            done.append(f"create {init.relative_to(root)}")
            if not dry:
                init.parent.mkdir(exist_ok=True)
                init.write_text(doc, encoding="utf-8")
                git("add", str(init), root=root)
    for old in MOVES:
        src = root / "r3rl" / f"{old}.py"
        dst = root / new_path(old)
        if not src.exists():
            continue
        if dst.exists():
            sys.exit(f"both {src.relative_to(root)} and {dst.relative_to(root)} exist: merge them by hand, then rerun")
        done.append(f"git mv r3rl/{old}.py {dst.relative_to(root)}")
        if not dry:
            git("mv", str(src), str(dst), root=root)
    return done


# ---- 2. the references --------------------------------------------------------------------------

def _dotted_pattern() -> re.Pattern[str]:
    # r3rl.<old> not inside a longer name; "r3rl.mining" is also the new package's name, so it is
    # rewritten only where it does not already go on to the package's new module
    alts = []
    for old, new in MOVES.items():
        pkg, _, mod = new.rpartition(".")
        if pkg == f"r3rl.{old}":
            alts.append(rf"{old}(?!\.{mod}\b|[ \t]+import[ \t]+{mod}\b)")  # nor `from r3rl.mining import failure_set`
        else:
            alts.append(old)
    return re.compile(r"(?<![\w./-])r3rl\.(" + "|".join(alts) + r")(?![\w])")


DOTTED = _dotted_pattern()
PATH = re.compile(r"(?<![\w.-])r3rl/(" + "|".join(MOVES) + r")\.py\b")
FROM_R3RL = re.compile(r"^(?P<indent>[ \t]*(?:>>> )?)from r3rl import (?P<names>[\w ,]+?)(?P<tail>[ \t]*(?:#.*)?)$", re.M)
BARE = re.compile(r"(?<![\w./-])(" + "|".join(MOVES) + r")\.py\b")


def rewrite_from_lines(text: str) -> str:
    """`from r3rl import prompts, cli` -> `from r3rl.environment import prompts` + `from r3rl import cli`."""

    def one(m: re.Match[str]) -> str:
        items = [s.strip() for s in m["names"].split(",") if s.strip()]
        if not any(it.split()[0] in MOVES for it in items):
            return m[0]
        stay: list[str] = []
        moved: dict[str, list[str]] = {}
        for it in items:
            name, _, alias = it.partition(" as ")
            name, alias = name.strip(), alias.strip()
            if name not in MOVES:
                stay.append(it)
                continue
            pkg, _, mod = MOVES[name].rpartition(".")
            bound = alias or name
            moved.setdefault(pkg, []).append(mod if mod == bound else f"{mod} as {bound}")
        lines = [f"from {pkg} import {', '.join(mods)}" for pkg, mods in moved.items()]
        if stay:
            lines.insert(0, f"from r3rl import {', '.join(stay)}")
        lines[-1] += m["tail"]
        return "\n".join(m["indent"] + line for line in lines)

    return FROM_R3RL.sub(one, text)


def rewrite_tree_entries(text: str) -> str:
    """Inside a fenced block that lists the package (a line `r3rl/`), an entry line `  rollout.py  what`
    names the module by its new place, `  environment/rollout.py  what`; several names on one
    entry line (`  config.py  io.py  ...`, `  io.py, errors.py, ...`) get theirs, the runtime ones as one `runtime/`."""
    out: list[str] = []
    in_fence = in_tree = False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_fence, in_tree = not in_fence, False
            out.append(line)
            continue
        if in_fence and line.strip() == "r3rl/":
            in_tree = True
        if in_tree and re.match(r"^  \S", line):
            name_re = r"(?:[\w.]+\.py|\w+/)(?=[ ,]|$)"
            m = re.match(rf"^  (?P<key>{name_re}(?:,? +{name_re})*,?)(?P<rest>.*)$", line)
            if not m:
                out.append(line)
                continue
            key, rest = m["key"], m["rest"]
            tokens = re.split(r"(,? +)", key)
            seen_runtime = False
            new_tokens: list[str] = []
            for tok in tokens:
                bare = tok.rstrip(",")
                name = bare[:-3] if bare.endswith(".py") else None
                if name in MOVES:
                    place = in_package(name)
                    if place.startswith("runtime/"):
                        if seen_runtime:
                            if new_tokens and re.fullmatch(r",? +", new_tokens[-1]):
                                new_tokens.pop()
                            continue
                        seen_runtime, place = True, "runtime/"
                    tok = place + tok[len(bare):]
                new_tokens.append(tok)
            new_key = "".join(new_tokens).rstrip(", ")
            if new_key != key:
                desc = rest.lstrip(" ")
                pad = max(2, 16 - 2 - len(new_key)) if desc else 0
                line = "  " + new_key + " " * pad + desc
        out.append(line)
    return "\n".join(out)


def rewrite_bare_in_prose(text: str) -> str:
    """Markdown prose outside code blocks: `(rollout.py)` -> `(environment/rollout.py)`."""
    out, in_fence = [], False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence:
            line = BARE.sub(lambda m: in_package(m[1]), line)
        out.append(line)
    return "\n".join(out)


def rewrite_text(text: str, path: Path) -> str:
    text = rewrite_from_lines(text) if path.suffix in {".py", ".md", ".txt", ""} else text
    text = PATH.sub(lambda m: new_path(m[1]), text)
    text = DOTTED.sub(lambda m: MOVES[re.match(r"\w+", m[1])[0]], text)
    if path.suffix == ".py":
        text = sort_rewritten_imports(text)
    if path.suffix == ".md":
        text = rewrite_tree_entries(text)
        text = rewrite_bare_in_prose(text)
    return text


FROM_LINE = re.compile(r"^(?P<indent>[ \t]*)from (?P<module>r3rl[\w.]*) import [^(\\\n]+$")


def _names_a_moved_module(line: str) -> bool:
    for new in MOVES.values():
        pkg, _, mod = new.rpartition(".")
        if new in line or re.search(rf"from {re.escape(pkg)} import .*\b{mod}\b", line):
            return True
    return False


def sort_rewritten_imports(text: str) -> str:
    """A run of one-line `from r3rl... import` statements (same indent) that names a moved module is put
    back in module order, as the rest of the code keeps them; other runs are left as they are."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FROM_LINE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i
        while j < len(lines) and (n := FROM_LINE.match(lines[j])) and n["indent"] == m["indent"]:
            j += 1
        run = lines[i:j]
        if len(run) > 1 and any(_names_a_moved_module(x) for x in run):
            lines[i:j] = sorted(run, key=lambda x: FROM_LINE.match(x)["module"])
        i = j
    return "\n".join(lines)


# ---- 3. tests/test_layering.py ------------------------------------------------------------------

def rewrite_layers(text: str) -> str:
    m = re.search(r"^LAYERS[^\n]*= \[\n(?P<body>.*?)^\]\n", text, re.S | re.M)
    if not m:
        return text
    rows: list[list[str]] = [list(ast.literal_eval(line.strip().rstrip(",")))
                             for line in m["body"].splitlines() if line.strip().startswith("(")]
    rows = [[n for n in row if n not in MOVES or MOVES[n].split(".")[1] == n] for row in rows]
    for unit, beside in NEW_UNITS_BESIDE.items():
        if not any(unit in row for row in rows):
            for row in rows:
                if beside in row:
                    row.append(unit)
    rows = [row for row in rows if row]
    body = "".join("    (" + ", ".join(f'"{n}"' for n in row) + ("," if len(row) == 1 else "") + "),\n" for row in rows)
    if body == m["body"]:
        return text
    return text[: m.start("body")] + body + text[m.end("body"):]


def rewrite_placement(text: str) -> str:
    head = "Placement of the modules docs/design.md does not name:\n"
    start = text.find(head)
    end = text.find("\nTo place a new module", start)
    if start < 0 or end < 0:
        return text
    block = text[start + len(head): end].split("\n")
    entries: list[list[str]] = []
    for line in block:
        if re.match(r"^    \S", line) or not entries:
            entries.append([line])
        else:
            entries[-1].append(line)
    out: list[str] = []
    for entry in entries:
        key = re.split(r" {2,}", entry[0].strip(), maxsplit=1)[0]
        out.extend(PLACEMENT_ENTRIES.get(key, entry))
    return text[: start + len(head)] + "\n".join(out) + text[end:]


# the self-test's made-up source names modules by their old place; after the generic rewrite:
SELF_TEST = [
    ("from r3rl import prompts, __version__", "from r3rl import tasks, __version__"),
    ('"r3rl.environment.prompts", "r3rl.engine"', '"r3rl.tasks", "r3rl.engine"'),
    # `from ..mining import mine` imports the package r3rl.mining (`mine` is no module of it)
    ('"r3rl.engine.hf", "r3rl.mining.failure_set"} <= got', '"r3rl.engine.hf", "r3rl.mining"} <= got'),
    ("# `from r3rl import prompts` imports the module r3rl.environment.prompts,",
     "# `from r3rl import tasks` imports the module r3rl.tasks,"),
    ('{"rollout", "prompts", "engine", "mining"}', '{"environment", "tasks", "engine", "mining"}'),
]


def rewrite_layering_test(text: str) -> str:
    text = rewrite_layers(text)
    text = rewrite_placement(text)
    for old, new in SELF_TEST:
        text = text.replace(old, new)
    return text


# ---- driver -------------------------------------------------------------------------------------

def text_files(root: Path) -> list[Path]:
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", root=root).split("\0")
    files = []
    for name in sorted(set(filter(None, names))):
        p = root / name
        if p.is_file() and not p.is_symlink() and p.resolve() != SELF and p.suffix not in SKIP_SUFFIXES:
            files.append(p)
    return files


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    root = Path(git("rev-parse", "--show-toplevel", root=Path.cwd()).strip())
    for step in move_modules(root, dry):
        print(step)
    changed = []
    left: list[str] = []
    for p in text_files(root):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new = rewrite_text(text, p)
        if p.relative_to(root).as_posix() == "tests/test_layering.py":
            new = rewrite_layering_test(new)
        if new != text:
            changed.append(p.relative_to(root).as_posix())
            if not dry:
                p.write_text(new, encoding="utf-8")
        if p.suffix == ".py":
            for i, line in enumerate(new.splitlines(), 1):
                if any(not (p.parent / Path(in_package(b[1])).name).exists() or p.parent.name != Path(in_package(b[1])).parent.name
                       for b in BARE.finditer(line)):
                    left.append(f"{p.relative_to(root).as_posix()}:{i}: {line.strip()[:110]}")
    print(f"{'would rewrite' if dry else 'rewrote'} {len(changed)} files" + "".join(f"\n  {c}" for c in changed))
    if left:
        print("bare module file names in .py files, left as they are (read them: some may mean the moved modules):")
        print("\n".join(f"  {x}" for x in left))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
