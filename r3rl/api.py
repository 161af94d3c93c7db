"""The Python API: what `r3rl mine`, `eval`, `train` and `report` do, as functions.

The commands in r3rl/cli.py call these same functions (the command line only adds its printing and
Ctrl-C handling), so a script and the command line behave alike: the same checks before the work
starts (output folders, task options), the same files, the same errors (r3rl.errors.InputError and
its subclasses, one sentence naming the field or file). `import r3rl` exposes them lazily:

    import r3rl

    cfg = r3rl.load_config("configs/qwen2.5-1.5b-countdown.yaml", ["train.steps=10"])
    before = r3rl.evaluate(cfg, output_dir="runs/eval_before")
    final = r3rl.train(cfg)                                  # mines cfg.failures.path first if missing
    after = r3rl.evaluate(cfg, model=final, output_dir="runs/eval_after")

`config` is a Config (r3rl.load_config), a YAML file, or None (the defaults); `overrides` are
"section.field=value" strings as on the command line, applied on top of a file.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from r3rl.config import Config
    from r3rl.evaluation.result import EvalResult

__all__ = ["train", "evaluate", "mine", "report", "as_config"]

ConfigLike = Union["Config", str, os.PathLike, None]


def as_config(config: ConfigLike = None, overrides: list[str] | None = None) -> "Config":
    """A validated copy of `config` (a Config, a YAML file or None), with `overrides` applied."""
    from r3rl.config import Config, load_config, validate
    from r3rl.errors import InputError

    if isinstance(config, Config):
        if overrides:
            raise InputError("overrides go with a config file (or None); on a Config object set its fields")
        return validate(copy.deepcopy(config))  # fields set by hand are checked like a file's
    return load_config(config, list(overrides or []))


def _rollout(cfg, device=None):
    """The model behind an engine, and the rollout over the configured task."""
    from r3rl.environment.stack import build_rollout

    return build_rollout(cfg, device=device)


def _launched_rollout(cfg):
    """Under `accelerate launch` every process loads the model on its own device and takes its share
    of the chunks (r3rl/runtime/distributed.py); a plain run is one process."""
    from r3rl.runtime.distributed import launched_state

    state = launched_state(cfg.train.collective_timeout_s)
    return _rollout(cfg, device=state.device if state is not None else None)


def _say(msg: str, file=None) -> None:
    """Print once, from the main process of a launched run."""
    from r3rl.runtime.distributed import launch_rank

    if launch_rank() == 0:
        print(msg, file=file or sys.stdout, flush=True)


def _split_line(task, split: str, asked: int, got: int) -> str:
    """How many examples the split gave, and, for a task read from a file, how the file was split:
    a 5-row file held out 10% by hash otherwise evaluates 1 row without a word."""
    from r3rl.tasks.data import FileTask

    line = f"{task.name}: {got} example(s) from split '{split}' (asked for {asked})"
    if isinstance(task, FileTask) and task.path:
        counts = {s: len(task.load_examples(s, None)) for s in ("train", "test")}
        line += f"; {task.path} gives {counts['train']} train / {counts['test']} test"
        if task.test_path is None:
            line += (f" (a hash-based test_fraction={task.test_fraction} of its rows is the test split; "
                     "set task.options.test_path or test_fraction to change it)")
    return line


def _announce(line: str) -> None:
    """Progress notes go to stderr (stdout stays `r3rl mine`'s JSON summary), from the main process only."""
    _say(line, file=sys.stderr)


def mine(config: ConfigLike = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Mine a failure set into `failures.path` (resumable); returns its summary (what `r3rl mine` prints)."""
    from r3rl.mining.failure_set import mine as mine_failures
    from r3rl.runtime.file_checks import check_output

    cfg = as_config(config, overrides)
    check_output(cfg.failures.path, "failures.path", is_file=True)
    roll = _launched_rollout(cfg)
    with roll.engine:  # closed on success, error and Ctrl-C alike
        got = len(roll.task.load_examples(cfg.failures.split, cfg.failures.num_examples, seed=cfg.seed))
        _announce(_split_line(roll.task, cfg.failures.split, cfg.failures.num_examples, got))
        return mine_failures(roll, cfg.failures, cfg.seed, model=cfg.model, task_options=cfg.task.options)


def evaluate(config: ConfigLike = None, overrides: list[str] | None = None, *, model: str | os.PathLike | None = None,
             output_dir: str | os.PathLike | None = None, overwrite: bool = False) -> "EvalResult":
    """Evaluate acc@1, acc@2 and the no-reflection control (what `r3rl eval` does); returns the typed
    results.json (r3rl.evaluation.result.EvalResult: `.value("acc@2")`, `.acc["acc@2"].ci`, `.to_json()`).

    model: a hub id, model folder or LoRA adapter folder (default `model.name_or_path`).
    output_dir: where results.json and episodes.jsonl go (default `eval.output_dir`); the same call
        into the same folder resumes after its last finished chunk, when it holds an evaluation of
        the same weights (any other is refused, unless `overwrite` starts over).
    """
    from r3rl.engine.provenance import model_identity
    from r3rl.evaluation.accuracy import check_same_weights, evaluate_model
    from r3rl.runtime.file_checks import check_output

    cfg = as_config(config, overrides)
    if model:
        cfg.model.name_or_path = str(model)
    out = Path(output_dir or cfg.eval.output_dir)
    check_output(out, "--output" if output_dir else "eval.output_dir")
    if not overwrite:  # before the model loads: an evaluation of other weights there is kept
        check_same_weights(out, cfg.model.name_or_path, model_identity(cfg.model)["weights"])
    roll = _launched_rollout(cfg)
    with roll.engine:  # closed on success, error and Ctrl-C alike
        identity = model_identity(cfg.model)  # again once loaded: a Hub model is in the cache only now
        got = len(roll.task.load_examples(cfg.eval.split, cfg.eval.num_examples, seed=cfg.seed))
        _announce(_split_line(roll.task, cfg.eval.split, cfg.eval.num_examples, got))
        return evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, model_name=cfg.model.name_or_path,
                              identity=identity, overwrite=overwrite)


def train(config: ConfigLike = None, overrides: list[str] | None = None, *, resume: bool | str = False,
          overwrite: bool = False) -> Path:
    """Reflection GRPO training (what `r3rl train` does); returns the final model's folder.

    Mines `failures.path` first when it does not exist. resume: True continues from the latest
    checkpoint of `train.output_dir`, a path from that checkpoint. overwrite: start again in a
    `train.output_dir` that holds an older run. The model card is written into the final folder
    (and pushed when `train.push_to_hub`).
    """
    from r3rl.reporting.model_card import publish_final
    from r3rl.runtime.distributed import launch_rank
    from r3rl.runtime.file_checks import check_output
    from r3rl.training.trainer import train as run_training

    from r3rl.errors import InputError

    cfg = as_config(config, overrides)
    if overwrite and resume:
        raise InputError(f"{'--resume' if resume is True else '--resume-from'} continues the run in {cfg.train.output_dir} "
                         "and --overwrite deletes it: pass one of them")
    if overwrite:
        cfg.train.overwrite_output_dir = True
    check_output(cfg.train.output_dir, "train.output_dir")
    if not Path(cfg.failures.path).exists():  # training mines it first
        check_output(cfg.failures.path, "failures.path", is_file=True)
    final = run_training(cfg, resume=resume)
    if launch_rank() == 0:  # the model cards (and the Hub push) once; training has closed the process group
        publish_final(cfg.train.output_dir, final, cfg.train.push_to_hub, cfg.train.hub_model_id)
    return Path(final)


def report(run_dir: str | os.PathLike) -> Path:
    """report.md, report.html and report/*.png of a run folder (what `r3rl report` writes), and the model
    cards of its final folder rewritten with the evaluations; returns report.html."""
    from r3rl.reporting.model_card import write_model_cards
    from r3rl.reporting.report import build_report
    from r3rl.reporting.run import load_run, lookup

    html = build_report(run_dir)
    if (Path(run_dir) / "final" / "README.md").is_file():  # a card written by `r3rl train`: now with the evals
        write_model_cards(run_dir, lookup(load_run(run_dir).config, "train.hub_model_id") or None)
    return html
