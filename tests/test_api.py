"""The Python API: `import r3rl` is cheap, its names resolve, the README's example runs as written,
and the functions give the command line's errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import r3rl

ROOT = Path(__file__).resolve().parents[1]


def _readme_api_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python API section has no python code block"
    return blocks[0]


def test_import_r3rl_loads_nothing_heavy():
    code = ("import sys, r3rl; heavy = [m for m in ('torch', 'transformers', 'yaml', 'r3rl.api', 'r3rl.config') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT).stdout.strip()
    assert out == "[]"


def test_every_exported_name_resolves():
    for name in r3rl.__all__:
        assert getattr(r3rl, name) is not None
    assert set(r3rl.__all__) <= set(dir(r3rl))
    with pytest.raises(AttributeError):
        r3rl.no_such_function  # noqa: B018


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_api_example(), "README.md (The Python API)", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"^acc@2 \d\.\d\d -> \d\.\d\d$", out, flags=re.M)
    run = tmp_path / "runs" / "api"
    for f in ("final/README.md", "eval_before/results.json", "eval_after/results.json",
              "report.html", "failures.jsonl", "metrics.jsonl"):
        assert (run / f).is_file(), f


def test_the_api_gives_the_command_lines_errors(tmp_path):
    f = tmp_path / "sums.jsonl"
    f.write_text("{}\n")
    with pytest.raises(r3rl.InputError, match=rf"^train.output_dir: cannot write {f}/run: {f} is a file"):
        r3rl.train(None, ["task.name=addition", "model.name_or_path=demo", f"train.output_dir={f}/run"])
    with pytest.raises(r3rl.InputError, match=r"^task.options of task 'examples.custom_task.my_task:MyTask'"):
        r3rl.evaluate(None, ["task.name=examples.custom_task.my_task:MyTask", "task.options.test_fraction=2",
                             f"eval.output_dir={tmp_path}/e"])
    cfg = r3rl.load_config()
    cfg.train.learning_rate = -1.0  # a field set by hand is validated like a file's
    with pytest.raises(r3rl.InputError, match="train.learning_rate: must be positive"):
        r3rl.train(cfg)
    with pytest.raises(r3rl.InputError, match="overrides go with a config file"):
        r3rl.evaluate(cfg, ["eval.num_examples=2"])
