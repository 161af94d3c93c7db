"""Model cards of trained model folders (built offline from the run folder) and the push to the Hub (faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from r3rl.config import Config, ConfigError, dump_config, load_config
from r3rl.reporting import model_card
from r3rl.reporting.model_card import build_model_card, hub_repo_id, push_folder, write_model_cards


def results(acc1: float, acc2: float, control: float, n: int = 500) -> dict:
    """An eval results.json with made-up but consistent intervals (the card copies them, it does not compute them)."""
    return {"task": "countdown", "model": "m", "n": n, "samples": 1, "trials": n,
            "acc@1": acc1, "acc@1_ci": [acc1 - 0.04, acc1 + 0.04],
            "acc@2": acc2, "acc@2_ci": [acc2 - 0.04, acc2 + 0.04],
            "acc@2_no_reflection": control, "acc@2_no_reflection_ci": [control - 0.04, control + 0.04]}


def make_run(root: Path, *, base: str = "Qwen/Qwen2.5-1.5B-Instruct", steps_done: int = 10, lora: bool = True,
             before: dict | None = None, after: dict | None = None) -> Path:
    cfg = Config()
    cfg.model.name_or_path = base
    cfg.task.name = "countdown"
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch_size = 10, 256, 8
    cfg.train.learning_rate, cfg.train.lora, cfg.train.lora_r = 5e-7, lora, 16
    cfg.rollout.group_size = 8
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(dump_config(cfg))
    (root / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1}) + "\n"
                                                for s in range(1, steps_done + 1)))
    for name, res in (("eval_before", before), ("eval_after", after)):
        if res is not None:
            (root / name).mkdir()
            (root / name / "results.json").write_text(json.dumps(res))
    final = root / "final"
    final.mkdir()
    (final / ("adapter_config.json" if lora else "config.json")).write_text("{}")
    return root


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def write_episodes(eval_dir: Path, retry_ok: list[bool]) -> None:
    """Per-trial records of an eval: every first attempt failed; retry_ok[i] says whether trial i's retry passed."""
    eval_dir.joinpath("episodes.jsonl").write_text("".join(
        json.dumps({"example_id": str(i), "sample": 0, "attempt_ok": False, "retry_ok": ok}) + "\n"
        for i, ok in enumerate(retry_ok)))


def test_card_with_before_and_after(tmp_path):
    run = make_run(tmp_path / "run", before=results(0.060, 0.102, 0.080), after=results(0.349, 0.450, 0.370))
    # 20 paired trials: 2 pass before and after, 8 only after, none only before -> exact McNemar p = 2 * 0.5**8
    write_episodes(run / "eval_before", [True] * 2 + [False] * 18)
    write_episodes(run / "eval_after", [True] * 10 + [False] * 10)
    [path] = write_model_cards(run, repo_id="me/qwen-countdown-r3rl")
    assert path == run / "final" / "README.md"
    text = path.read_text()
    meta = front_matter(text)
    assert meta["base_model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert meta["library_name"] == "peft"
    assert {"r3rl", "grpo", "reflection", "countdown", "lora"} <= set(meta["tags"])
    # the after-training accuracies as the Hub's model-index
    index = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert index == {"acc@1 (first try)": 0.349, "acc@2 (retry after reflection)": 0.45,
                     "acc@2 without reflection (control)": 0.37}
    # the card round-trips through huggingface_hub (what the Hub itself parses)
    assert ModelCard.load(path).data.base_model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert "[arXiv 2505.24726](https://arxiv.org/abs/2505.24726)" in text
    assert "| acc@1 (first try) | 6.0% [2.0%, 10.0%] | 34.9% [30.9%, 38.9%] | +28.9 pts |" in text
    assert "| acc@2 (retry after reflection) | 10.2% [6.2%, 14.2%] | 45.0% [41.0%, 49.0%] | +34.8 pts |" in text
    assert "| acc@2 without reflection (control) | 8.0% [4.0%, 12.0%] | 37.0% [33.0%, 41.0%] | +29.0 pts |" in text
    assert "| task | `countdown` |" in text and "| base model | [Qwen/Qwen2.5-1.5B-Instruct](" in text
    assert "| steps | 10 |" in text and "| failures per step | 256 |" in text and "| group size" in text
    assert "| learning rate | 5e-07 |" in text and "| fine-tuning | LoRA r=16, alpha=32 |" in text
    assert "AutoPeftModelForCausalLM.from_pretrained('me/qwen-countdown-r3rl')" in text
    assert "8 of 20 paired trials passed only after training, 0 only before training" in text
    assert "p = 0.00781" in text and "a significant improvement" in text
    assert "# qwen-countdown-r3rl" in text and "@article{bensal2025reflect" in text
    # these episodes carry no failure classes: the card says so in a sentence instead of an empty table
    assert "### By failure class" in text and "| failure class |" not in text


def test_card_carries_the_per_class_table(tmp_path):
    from tests.class_run_fixtures import class_run  # hand-computed per-class runs (test_report_classes.py)

    run = class_run(tmp_path / "run")
    (run / "final").mkdir(exist_ok=True)
    [path] = write_model_cards(run)
    text = path.read_text()
    assert "### By failure class" in text and "| failure class | failures before |" in text


def test_card_without_evaluation_and_with_a_local_base(tmp_path):
    local_base = tmp_path / "my-base"
    local_base.mkdir()
    (local_base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# my base\n")
    run = make_run(tmp_path / "run", base=str(local_base), steps_done=6, lora=False)
    text = str(build_model_card(run, run / "final"))
    meta = front_matter(text)
    assert "base_model" not in meta  # a local path is no Hub id
    assert meta["license"] == "apache-2.0"  # taken from the base model's own card
    assert meta["library_name"] == "transformers" and "lora" not in meta["tags"]
    assert "model-index" not in meta
    assert f"`{local_base}` (a local model)" in text
    assert "No evaluation was recorded" in text and "| steps | 6 of 10 |" in text
    assert "| fine-tuning | all weights |" in text
    assert "AutoModelForCausalLM.from_pretrained(" in text


def test_card_is_rewritten_when_the_after_evaluation_lands(tmp_path):
    run = make_run(tmp_path / "run", before=results(0.2, 0.3, 0.25))
    merged = run / "final-merged"
    merged.mkdir()
    paths = write_model_cards(run)
    assert paths == [run / "final" / "README.md", merged / "README.md"]
    assert "| — |" in paths[0].read_text() and "model-index" not in front_matter(paths[0].read_text())
    assert "paired trials" not in paths[0].read_text()  # no pairs without episodes: the table says enough
    (run / "eval_after").mkdir()
    (run / "eval_after" / "results.json").write_text(json.dumps(results(0.5, 0.6, 0.55)))
    write_model_cards(run)
    text = paths[0].read_text()
    assert "| acc@2 (retry after reflection) | 30.0% [26.0%, 34.0%] | 60.0% [56.0%, 64.0%] | +30.0 pts |" in text
    assert front_matter(paths[1].read_text())["library_name"] == "transformers"  # merged weights, no adapter


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"), ("gpt2", "gpt2"), ("demo", None),
     ("/abs/path/model", None), ("a/b/c", None), ("../x", None), ("", None), (None, None)],
)
def test_hub_repo_id(name, expected):
    assert hub_repo_id(name) == expected


def test_push_folder_creates_the_repo_and_uploads(tmp_path):
    calls = []
    url = push_folder(tmp_path, "me/model", upload=lambda **kw: calls.append(("upload", kw)),
                      create_repo=lambda repo_id, **kw: calls.append(("create", repo_id, kw)))
    assert url == "https://huggingface.co/me/model"
    assert calls[0] == ("create", "me/model", {"repo_type": "model", "private": None, "exist_ok": True})
    assert calls[1][1]["repo_id"] == "me/model" and calls[1][1]["folder_path"] == str(tmp_path)
    with pytest.raises(ValueError, match="not a Hub model id"):
        push_folder(tmp_path, "a/b/c", upload=lambda **kw: None, create_repo=lambda *a, **kw: None)


def test_push_needs_a_repo_id():
    with pytest.raises(ConfigError, match="train.push_to_hub needs train.hub_model_id"):
        load_config(None, ["train.push_to_hub=true"])
    cfg = load_config(None, ["train.push_to_hub=true", "train.hub_model_id=me/model"])
    assert cfg.train.push_to_hub and cfg.train.hub_model_id == "me/model"


def test_r3rl_train_writes_the_card_and_pushes_the_final_folder(tmp_path, monkeypatch):
    """The trainer saves final/; `r3rl train` (its caller) writes the card and pushes (training never imports reporting)."""
    import huggingface_hub

    from r3rl import cli
    from r3rl.demo.tiny import save_tiny_model
    from tests.trainer_fixtures import cli_overrides, tiny_config

    uploads, created = [], []
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kw: uploads.append(kw))
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: created.append(repo_id))
    model_dir = save_tiny_model(tmp_path / "model", hidden_size=32, layers=1, heads=2, kv_heads=1)
    cfg = tiny_config(model_dir, tmp_path / "run", steps=2, save_every=0, push_to_hub=True, hub_model_id="me/tiny")
    assert cli.main(["train", *cli_overrides(cfg)]) == 0
    final = tmp_path / "run" / "final"
    text = (final / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "transformers" and "r3rl" in meta["tags"]
    assert "| steps | 2 |" in text and "No evaluation was recorded" in text
    assert created == ["me/tiny"]
    assert [u["folder_path"] for u in uploads] == [str(final)] and uploads[0]["repo_id"] == "me/tiny"
    assert model_card.hub_repo_id(str(model_dir)) is None


def test_training_does_not_import_reporting():
    import subprocess
    import sys

    code = ("import sys, r3rl.training.trainer, r3rl.training.failures, r3rl.training.metrics; "
            "print(sorted(m for m in sys.modules if m.startswith('r3rl.reporting')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_a_base_readme_without_front_matter_reads_no_license_and_logs_nothing(tmp_path):
    """The demo model's README has no front matter: huggingface_hub logged "Repo card metadata block was
    not found" on every `r3rl demo`, a warning no user can act on."""
    import logging

    from r3rl.demo import model_path

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("huggingface_hub")
    logger.addHandler(handler)
    try:
        assert model_card._base_license(str(model_path())) is None
        (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n\n# a base\n")
        assert model_card._base_license(str(tmp_path)) == "mit"
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []


# ---------------------------------------------------------------- numbers that describe the weights they name


def _weights(folder: Path) -> str:
    from r3rl.config import ModelConfig
    from r3rl.engine.provenance import model_identity

    return model_identity(ModelConfig(name_or_path=str(folder)))["weights"]


def _trained_run(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run whose eval_after measured the 8-step weights, then trained on (--resume, train.steps=10): final/
    now holds other weights than eval_after/results.json describes."""
    from r3rl.demo.tiny import save_tiny_model

    old = save_tiny_model(tmp_path / "step8", seed=0, hidden_size=32, layers=1, heads=2, kv_heads=1)
    run = make_run(tmp_path / "run", lora=False, before=results(0.06, 0.10, 0.08),
                   after={**results(0.349, 0.450, 0.370), "model": str(tmp_path / "run" / "final"), "weights": _weights(old)})
    final = save_tiny_model(run / "final", seed=1, hidden_size=32, layers=1, heads=2, kv_heads=1)
    return run, final, old


def test_card_marks_numbers_of_other_weights(tmp_path):
    run, final, _ = _trained_run(tmp_path)
    text = str(build_model_card(run, final))
    assert "numbers are stale" in text and "eval_after" in text
    assert "model-index" not in front_matter(text)  # the Hub would index numbers of other weights
    assert _weights(final) in text  # the card names the weights it describes
    # once eval_after is redone on final/, the numbers are shown as before
    after = json.loads((run / "eval_after" / "results.json").read_text())
    (run / "eval_after" / "results.json").write_text(json.dumps({**after, "weights": _weights(final)}))
    text = str(build_model_card(run, final))
    assert "are stale" not in text and "model-index" in front_matter(text)


def test_report_warns_of_numbers_of_other_weights_in_one_sentence(tmp_path, capsys):
    from r3rl.cli import main

    run, final, _ = _trained_run(tmp_path)
    (final / "README.md").write_text("the card `r3rl train` wrote, before any evaluation")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr()
    warned = [line for line in (out.out + out.err).splitlines() if "are stale" in line]
    assert len(warned) == 1 and "eval_after" in warned[0] and str(final) in warned[0]
    md = (run / "report.md").read_text()
    assert "are stale" in md and _weights(final) in md
    assert "are stale" in (final / "README.md").read_text()  # the report rewrites the run's card
    # evaluated again on final/: no warning, and the card shows the numbers plainly
    after = json.loads((run / "eval_after" / "results.json").read_text())
    (run / "eval_after" / "results.json").write_text(json.dumps({**after, "weights": _weights(final)}))
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr()
    assert "are stale" not in out.out + out.err + (final / "README.md").read_text()


def test_results_without_a_fingerprint_still_load_with_a_note(tmp_path):
    from r3rl.reporting.run import load_run

    run, final, _ = _trained_run(tmp_path)
    after = json.loads((run / "eval_after" / "results.json").read_text())
    del after["weights"]  # a results.json of an earlier r3rl
    (run / "eval_after" / "results.json").write_text(json.dumps(after))
    notes = [n for n in load_run(run).notes if "fingerprint" in n]
    assert len(notes) == 1 and "eval_after" in notes[0] and "cannot be checked" in notes[0]
    assert "are stale" not in str(build_model_card(run, final))


def test_metrics_past_the_saved_final_weights_are_flagged(tmp_path):
    """A resumed run stopped after logging step 9 of 10: final/ still holds the step-8 weights, as the
    trainer's weights.json records; the card says 8 steps and the report warns."""
    from r3rl.reporting.run import load_run

    run, final, _ = _trained_run(tmp_path)
    (run / "weights.json").write_text(json.dumps({"final": {"step": 8, "weights": _weights(final)}}))
    text = str(build_model_card(run, final))
    assert "| steps | 8 of 10 |" in text
    warning = load_run(run).stale["metrics.jsonl"]
    assert "step 10" in warning and "step 8" in warning and "final" in warning
    (run / "weights.json").write_text(json.dumps({"final": {"step": 10, "weights": _weights(final)}}))
    assert "metrics.jsonl" not in load_run(run).stale and "| steps | 10 |" in str(build_model_card(run, final))
    # final/ replaced after training (other weights copied in): the report and the card say so
    (run / "weights.json").write_text(json.dumps({"final": {"step": 10, "weights": "files:" + "0" * 32}}))
    assert "other weights than the run saved" in load_run(run).stale["final"]
    assert "other weights than the run saved" in str(build_model_card(run, final))
