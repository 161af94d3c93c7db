"""Evaluation writes its episodes chunk by chunk and a stopped run resumes to the same files;
evaluation sampling settings, the prompt-length limit and the per-step progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from r3rl.config import Config
from r3rl.demo.tiny import build_tokenizer, save_tiny_model
from r3rl.engine.scripted import ScriptedEngine
from r3rl.environment import prompts
from r3rl.environment.rollout import Rollout
from r3rl.evaluation.accuracy import evaluate_model
from r3rl.runtime.progress import GenerationProgress

from tests.test_rollout import EchoTask
from tests.trainer_fixtures import CoinTask


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from r3rl.engine import load_engine

    folder = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, layers=1, heads=2, kv_heads=1)
    return load_engine(str(folder))


def _cfg() -> Config:
    cfg = Config()
    cfg.generation.max_attempt_tokens = cfg.generation.max_reflection_tokens = cfg.generation.max_retry_tokens = 6
    cfg.eval.num_examples, cfg.eval.samples_per_example, cfg.eval.chunk_size = 6, 2, 2  # 3 chunks
    return cfg


def _files(out: Path) -> tuple[str, str]:
    return (out / "results.json").read_text(), (out / "episodes.jsonl").read_text()


def _interrupt_second_attempts(monkeypatch) -> Callable:
    """Patch Rollout.attempts to raise KeyboardInterrupt on its second call (chunk 1 is written; Ctrl-C in
    the middle of chunk 2); returns the original, to put back."""
    original = Rollout.attempts
    calls = {"n": 0}

    def interrupted(self, examples, n, seed, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, examples, n, seed, **kw)

    monkeypatch.setattr(Rollout, "attempts", interrupted)
    return original


def test_interrupted_evaluation_resumes_to_the_same_files(engine, tmp_path, monkeypatch):
    cfg = _cfg()
    roll = Rollout(engine, CoinTask(), cfg.generation, cfg.rollout)
    evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path / "straight", show_progress=False)
    straight = _files(tmp_path / "straight")
    assert len(straight[1].splitlines()) == 12
    # the tiny model samples: different seeds would give other texts, so equal files mean equal seeds
    assert len({json.loads(x)["attempt_text"] for x in straight[1].splitlines()}) > 1

    original = _interrupt_second_attempts(monkeypatch)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, show_progress=False)
    monkeypatch.setattr(Rollout, "attempts", original)
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 4  # chunk 1: 2 examples x 2 samples
    assert not (out / "results.json").exists()
    # a kill while appending chunk 2: one whole line and a cut one beyond what the state file vouches for
    with open(out / "episodes.jsonl", "a") as f:
        f.write(straight[1].splitlines()[4] + "\n" + '{"example_id": "10')

    counted = {"n": 0}

    def counting(self, examples, n, seed, **kw):
        counted["n"] += 1
        return original(self, examples, n, seed, **kw)

    monkeypatch.setattr(Rollout, "attempts", counting)
    evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, show_progress=False)
    assert counted["n"] == 2  # only chunks 2 and 3 were generated again
    assert _files(out) == straight

    # a finished evaluation run again is started over, not taken as done
    evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, show_progress=False)
    assert counted["n"] == 5 and _files(out) == straight


def test_other_settings_start_over(engine, tmp_path, monkeypatch):
    cfg = _cfg()
    roll = Rollout(engine, CoinTask(), cfg.generation, cfg.rollout)
    out = tmp_path / "e"
    original = _interrupt_second_attempts(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, show_progress=False)
    monkeypatch.setattr(Rollout, "attempts", original)
    cfg.eval.temperature = 0.0  # another evaluation: the saved chunk must not be reused
    res = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, show_progress=False)
    fresh = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=tmp_path / "fresh", show_progress=False)
    assert res == fresh and _files(out) == _files(tmp_path / "fresh")


def test_eval_sampling_settings_replace_generation_ones():
    tok = build_tokenizer()
    cfg = Config()
    cfg.eval.num_examples = 3
    cfg.eval.temperature, cfg.eval.top_p = 0.0, 0.5
    cfg.eval.max_attempt_tokens, cfg.eval.max_reflection_tokens, cfg.eval.max_retry_tokens = 11, 12, 13
    engine = ScriptedEngine(tok, lambda prompt, j: "banana")
    roll = Rollout(engine, EchoTask(), cfg.generation, cfg.rollout)
    evaluate_model(roll, cfg.eval, cfg.seed, show_progress=False)
    seen = {(p.temperature, p.top_p, p.max_new_tokens) for _, p in engine.calls}
    # attempts, reflections, retries and the control's retry
    assert seen == {(0.0, 0.5, 11), (0.0, 0.5, 12), (0.0, 0.5, 13)}
    assert roll.gen is cfg.generation and roll.gen.attempt_temperature == 1.0  # restored for training
    # unset: the generation section's settings, as before
    engine.calls.clear()
    evaluate_model(roll, Config().eval.__class__(num_examples=3), cfg.seed, show_progress=False)
    assert {(p.temperature, p.max_new_tokens) for _, p in engine.calls} == {(1.0, 256)}


def test_max_prompt_tokens_stops_with_the_example_named():
    tok = build_tokenizer()
    cfg = Config()
    roll = Rollout(ScriptedEngine(tok, lambda prompt, j: "x"), EchoTask(), cfg.generation, cfg.rollout)
    length = len(prompts.encode(tok, EchoTask().messages({"word": "apple"})))
    cfg.generation.max_prompt_tokens = length  # exactly at the limit: allowed
    roll.attempts(EchoTask().load_examples(n=1), n=1, seed=0)
    cfg.generation.max_prompt_tokens = length - 1
    with pytest.raises(ValueError, match=rf"example w0 of task 'echo': its prompt has {length} tokens, more than "
                                         rf"generation.max_prompt_tokens={length - 1}"):
        evaluate_model(roll, cfg.eval, cfg.seed, num_examples=1, show_progress=False)


def test_progress_follows_generation_steps_and_stages(monkeypatch):
    tok = build_tokenizer()
    cfg = Config()
    cfg.eval.num_examples = 3
    engine = ScriptedEngine(tok, lambda prompt, j: "banana")
    roll = Rollout(engine, EchoTask(), cfg.generation, cfg.rollout)
    stages, counts = [], []
    original_stage, original_tokens = GenerationProgress.stage, GenerationProgress._on_tokens
    monkeypatch.setattr(GenerationProgress, "stage",
                        lambda self, name, **kw: (stages.append(name), original_stage(self, name, **kw)))
    monkeypatch.setattr(GenerationProgress, "_on_tokens",
                        lambda self, n: (counts.append(n), original_tokens(self, n)))
    evaluate_model(roll, cfg.eval, cfg.seed, show_progress=True)
    assert stages == ["attempt", "reflection + retry", "control"]
    # one call per generation: 3 attempts, 3 reflections, 3 retries, 3 control retries
    banana = len(tok("banana", add_special_tokens=False)["input_ids"]) + 1
    assert len(counts) == 12 and counts[:3] == [banana] * 3
    assert engine.on_tokens is None and engine.on_generated is None  # the hooks are removed afterwards


# ---------------------------------------------------------------- Ctrl-C in the commands


def _scripted_rollout(cfg):
    tok = build_tokenizer()
    return Rollout(ScriptedEngine(tok, lambda prompt, j: "banana"), EchoTask(), cfg.generation, cfg.rollout)


@pytest.mark.parametrize("command", ["mine", "eval"])
def test_ctrl_c_prints_what_was_saved_and_the_resume_command(command, tmp_path, monkeypatch, capsys):
    from r3rl import api, cli

    monkeypatch.setattr(api, "_launched_rollout", _scripted_rollout)  # what the commands call
    original = _interrupt_second_attempts(monkeypatch)
    args = [command, f"failures.path={tmp_path}/f.jsonl", "failures.chunk_size=1", "eval.chunk_size=1",
            f"eval.output_dir={tmp_path}/eval", "failures.num_examples=3", "eval.num_examples=3"]
    assert cli.main(args) == 130
    out = capsys.readouterr().err
    err = [line for line in out.splitlines() if line.startswith("interrupted")]  # the rest is the progress bar
    assert len(err) == 1 and "Traceback" not in out
    saved = "1 mined example(s) are saved in" if command == "mine" else "1 finished chunk(s) of episodes are saved in"
    assert err[0].startswith(f"interrupted: {saved}") and err[0].endswith("resume with: r3rl " + " ".join(args))
    monkeypatch.setattr(Rollout, "attempts", original)
    assert cli.main(args) == 0  # the same command goes on


def test_ctrl_c_in_train_names_the_checkpoint(tmp_path, monkeypatch, capsys):
    from r3rl import cli
    from r3rl.training import trainer

    def interrupted(cfg, resume=False, show_progress=True):
        ckpt = Path(cfg.train.output_dir) / "checkpoints" / "step-0000002"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text('{"step": 2}')
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    # the run's own latest checkpoint is newer than the one it started from: --resume, not --resume-from
    assert cli.main(["train", f"train.output_dir={tmp_path}/run", "--resume-from", "old/ckpt"]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err == (f"interrupted: the latest checkpoint is {tmp_path}/run/checkpoints/step-0000002; resume with: "
                   f"r3rl train --resume train.output_dir={tmp_path}/run")


def test_split_line_says_how_a_small_file_was_split(tmp_path):
    """A 5-row file: the hash-based 10% test split holds 1 row, and the output says so."""
    from r3rl.api import _split_line
    from r3rl.tasks import load_task

    rows = [{"nums": [i, i + 1, 3], "target": 2 * i + 4} for i in range(1, 6)]
    path = tmp_path / "cd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task("countdown", path=str(path))
    got = len(task.load_examples("test", 200))
    line = _split_line(task, "test", 200, got)
    assert got == 1
    assert line.startswith(f"countdown: 1 example(s) from split 'test' (asked for 200); {path} gives 4 train / 1 test")
    assert "hash-based test_fraction=0.1" in line


def test_split_line_of_bfcl_a_folder_task_with_no_train_split():
    """BFCL's path is a folder and it has no train split: the line must not ask for one (it raised before)."""
    from pathlib import Path

    from r3rl.api import _split_line
    from r3rl.tasks import load_task

    task = load_task("bfcl", path=str(Path(__file__).parent / "fixtures" / "bfcl"))
    got = len(task.load_examples("test", 5))
    assert _split_line(task, "test", 5, got) == f"bfcl: {got} example(s) from split 'test' (asked for 5)"


# ---------------------------------------------------------------- results describe the weights they name

EVAL_SMALL = ["task.name=countdown", "eval.num_examples=4", "eval.chunk_size=2", "eval.samples_per_example=1",
              "generation.max_attempt_tokens=4", "generation.max_reflection_tokens=4", "generation.max_retry_tokens=4"]


def _tiny(folder: Path, seed: int) -> Path:
    return save_tiny_model(folder, seed=seed, hidden_size=32, layers=1, heads=2, kv_heads=1)


def _swap_weights(folder: Path, other: Path) -> None:
    """Other weights under the same path (a user copying a new fine-tune over an old one)."""
    import shutil

    shutil.copy(other / "model.safetensors", folder / "model.safetensors")


def test_resumed_eval_of_other_weights_under_the_same_path_stops(tmp_path, monkeypatch, capsys):
    """Ctrl-C after chunk 1, other weights copied into the model folder: the same command must not
    resume (half one model, half the other) but stop with one sentence naming the folder."""
    from r3rl import cli

    model, other, out = _tiny(tmp_path / "model", 0), _tiny(tmp_path / "other", 1), tmp_path / "eval"
    args = ["eval", "--model", str(model), "-o", str(out), *EVAL_SMALL]
    original = _interrupt_second_attempts(monkeypatch)
    assert cli.main(args) == 130
    monkeypatch.setattr(Rollout, "attempts", original)
    state = json.loads((out / "episodes.jsonl.state.json").read_text())
    assert state["chunks_done"] == 1 and state["fingerprint"]["weights"].startswith("files:")
    _swap_weights(model, other)
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--overwrite" in err and "resuming" not in err
    assert not (out / "results.json").exists()
    # --overwrite starts over: the files are those of a fresh evaluation of the new weights
    assert cli.main(args + ["--overwrite"]) == 0
    assert cli.main(["eval", "--model", str(model), "-o", str(tmp_path / "fresh"), *EVAL_SMALL]) == 0
    assert _files(out) == _files(tmp_path / "fresh")


def test_eval_refuses_to_replace_a_finished_eval_of_other_weights(tmp_path, capsys):
    """A plain eval before training and another after it, both into the default eval.output_dir:
    the second must not replace the first's results without a word (as `r3rl train` refuses)."""
    from r3rl import cli

    before, after, out = _tiny(tmp_path / "before", 0), _tiny(tmp_path / "after", 1), tmp_path / "runs" / "eval"
    assert cli.main(["eval", "--model", str(before), f"eval.output_dir={out}", *EVAL_SMALL]) == 0
    first = _files(out)
    res = json.loads(first[0])
    assert res["model"] == str(before) and res["weights"].startswith("files:")
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(after), f"eval.output_dir={out}", *EVAL_SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--overwrite" in err
    assert _files(out) == first  # the "before" results are kept
    # the same weights again (a finished eval run again) is fine, and --overwrite replaces other weights
    assert cli.main(["eval", "--model", str(before), f"eval.output_dir={out}", *EVAL_SMALL]) == 0
    assert cli.main(["eval", "--model", str(after), f"eval.output_dir={out}", "--overwrite", *EVAL_SMALL]) == 0
    assert json.loads((out / "results.json").read_text())["model"] == str(after)


def test_evaluate_model_keeps_an_evaluation_of_other_weights(engine, tmp_path):
    """The library call checks too (the CLI checks before loading the model): other weights stop it,
    overwrite=True starts over, and results.json names the weights it describes."""
    from r3rl.errors import InputError

    cfg = _cfg()
    roll = Rollout(engine, CoinTask(), cfg.generation, cfg.rollout)
    a = {"name_or_path": "m", "revision": "", "weights": "files:" + "a" * 32}
    b = {**a, "weights": "files:" + "b" * 32}
    out = tmp_path / "e"
    evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, model_name="m", identity=a, show_progress=False)
    assert json.loads((out / "results.json").read_text())["weights"] == a["weights"]
    with pytest.raises(InputError, match=rf"{out} holds a finished evaluation of the weights m held then.*--overwrite"):
        evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, model_name="m", identity=b, show_progress=False)
    res = evaluate_model(roll, cfg.eval, cfg.seed, output_dir=out, model_name="m", identity=b, overwrite=True,
                         show_progress=False)
    assert res.weights == json.loads((out / "results.json").read_text())["weights"] == b["weights"]
