"""Checkpoints: LoRA saves only the adapter (+ optimizer state) and resumes exactly; the final save
gathers sharded weights; a fresh run never writes into (or resumes) an older run's folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from r3rl.training.checkpoint import latest_checkpoint, prepare_output_dir
from r3rl.training.trainer import Trainer, train

from tests.trainer_fixtures import tiny_config


def _lora(model_dir, out, **kw):
    return tiny_config(model_dir, out, lora=True, lora_r=4, lora_alpha=8, beta=0.01, learning_rate=5e-2, **kw)


def test_lora_checkpoint_holds_the_adapter_only_and_resumes_exactly(model_dir, tmp_path, monkeypatch):
    straight = train(_lora(model_dir, tmp_path / "a"), show_progress=False)
    ckpt = latest_checkpoint(tmp_path / "a")
    saved = load_file(ckpt / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # no base weights
    base_numel = sum(v.numel() for v in load_file(model_dir / "model.safetensors").values())
    assert sum(v.numel() for v in saved.values()) < base_numel / 4
    opt_state = torch.load(ckpt / "optimizer.bin", weights_only=False)["state"]
    assert len(opt_state) == len(saved)  # AdamW state for each adapter tensor

    # killed after the step-2 checkpoint, resumed: the same adapter as the unbroken run
    cfg = _lora(model_dir, tmp_path / "b")
    original, calls = Trainer._backward, {"n": 0}

    def dying(self, *args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_backward", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    monkeypatch.setattr(Trainer, "_backward", original)
    resumed = train(cfg, resume=True, show_progress=False)
    a = load_file(straight / "adapter_model.safetensors")
    b = load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_loading_a_checkpoint_of_another_adapter_fails_clearly(model_dir, tmp_path):
    train(_lora(model_dir, tmp_path / "r4", steps=2), show_progress=False)
    other = Trainer(tiny_config(model_dir, tmp_path / "r2", lora=True, lora_r=2, lora_alpha=4), show_progress=False)
    with pytest.raises(ValueError, match="does not match this LoRA model"):
        from r3rl.training.checkpoint import load_checkpoint

        load_checkpoint(other.acc, latest_checkpoint(tmp_path / "r4"))


def test_final_save_of_sharded_weights_uses_the_gathered_state_dict(model_dir, tmp_path, monkeypatch):
    """Under ZeRO-3 / FSDP the local parameters are shards: the final model must be written from
    accelerator.get_state_dict (gathered on every rank), not from the local module."""
    trainer = Trainer(tiny_config(model_dir, tmp_path / "run", steps=1, save_every=0), show_progress=False)
    gathered = {f"model.{k}": torch.full_like(v, 0.5) for k, v in trainer.model.state_dict().items()}
    calls, original = [], trainer.acc.get_state_dict

    def get_state_dict(model, unwrap=True):
        if not unwrap:  # accelerate's own save_state
            return original(model, unwrap=False)
        calls.append(model)
        return gathered

    monkeypatch.setattr(trainer, "_sharded", lambda: True)
    monkeypatch.setattr(trainer.acc, "get_state_dict", get_state_dict)
    final = trainer.train()
    assert calls == [trainer.policy]
    saved = load_file(final / "model.safetensors")
    assert saved and all(bool((v == 0.5).all()) for v in saved.values())
    assert json.loads((tmp_path / "run" / "replicas.json").read_text())["sharded"] is True


def test_a_fresh_run_refuses_an_older_runs_folder(model_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(model_dir, run, steps=2), show_progress=False)
    with pytest.raises(ValueError, match=r"already holds a training run \(checkpoints, metrics.jsonl.*--resume.*--overwrite"):
        Trainer(tiny_config(model_dir, run, steps=2), show_progress=False)
    # --resume continues it; the overwrite flag deletes the older run's checkpoints and logs first
    Trainer(tiny_config(model_dir, run, steps=2), resume=True, show_progress=False)
    (run / "checkpoints" / "step-0000009").mkdir()
    train(tiny_config(model_dir, run, steps=1, overwrite_output_dir=True, save_every=0), show_progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000001"]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_output_dir_rules(tmp_path):
    prepare_output_dir(tmp_path / "missing", resume=False, overwrite=False, is_main=True)
    (tmp_path / "mined").mkdir()
    (tmp_path / "mined" / "failures.jsonl").write_text("{}\n")  # `r3rl mine` into the run folder first is fine
    (tmp_path / "mined" / "checkpoints").mkdir()  # an empty checkpoints folder holds nothing to resume
    prepare_output_dir(tmp_path / "mined", resume=False, overwrite=False, is_main=True)
    (tmp_path / "mined" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="metrics.jsonl"):
        prepare_output_dir(tmp_path / "mined", resume=False, overwrite=False, is_main=True)
    prepare_output_dir(tmp_path / "mined", resume=False, overwrite=True, is_main=True)
    assert sorted(p.name for p in (tmp_path / "mined").iterdir()) == ["checkpoints", "failures.jsonl"]


def test_cli_overwrite_flag(model_dir, tmp_path, capsys):
    from r3rl.cli import main

    from tests.trainer_fixtures import cli_overrides

    cfg = tiny_config(model_dir, tmp_path / "run", steps=1, save_every=0)
    assert main(["train", *cli_overrides(cfg)]) == 0
    assert main(["train", *cli_overrides(cfg)]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "Traceback" not in err
    assert main(["train", "--overwrite", *cli_overrides(cfg)]) == 0


def test_contradictory_resume_flags_are_refused(model_dir, tmp_path, capsys):
    """--resume with --overwrite, and --resume with train.steps below the checkpoint's step (which would
    print "resumed at step 2" and rewrite final/ with the 2-step weights under a 1-step config)."""
    from r3rl.cli import main

    from tests.trainer_fixtures import cli_overrides

    run = tmp_path / "run"
    cfg = tiny_config(model_dir, run, steps=2, save_every=0)
    assert main(["train", *cli_overrides(cfg)]) == 0
    from r3rl.engine.provenance import folder_weights  # the run records which weights final/ holds, and their step

    assert json.loads((run / "weights.json").read_text())["final"] == {"step": 2, "weights": folder_weights(run / "final")}
    final = (run / "final" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--resume", "--overwrite", *cli_overrides(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--overwrite" in err
    cfg.train.steps = 1
    assert main(["train", "--resume", *cli_overrides(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "train.steps" in err[-1] and "step 2" in err[-1] and "resumed" not in "".join(err)
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == final


def test_a_tied_weights_checkpoint_saves_without_accelerates_shared_tensor_warning(model_dir, tmp_path, caplog, capfd):
    """The tiny model ties its LM head to the embedding: accelerate's save_state dropped the alias with
    "[RANK 0] Removed shared tensor {...} while saving" on every checkpoint, which a user cannot act on.
    r3rl drops the same alias itself: the same file, no message, and the resume loads it."""
    import logging

    caplog.set_level(logging.INFO)
    cfg = tiny_config(model_dir, tmp_path / "run", steps=2, save_every=1)
    train(cfg, show_progress=False)
    captured = capfd.readouterr()
    assert "Removed shared tensor" not in caplog.text + captured.out + captured.err
    ckpt = latest_checkpoint(tmp_path / "run")
    saved = load_file(ckpt / "model.safetensors")
    tied = [k for k in saved if k.endswith("lm_head.weight") or k.endswith("embed_tokens.weight")]
    assert len(tied) == 1  # one copy of the tied matrix, as accelerate wrote it
    cfg.train.steps = 3
    train(cfg, resume=True, show_progress=False)  # loads the checkpoint back (strict load of the tied model)
