"""The trainer end to end on a tiny model: outputs, atomic checkpoints, exact resume, LoRA, two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r3rl.training.checkpoint import latest_checkpoint
from r3rl.demo.tiny import save_tiny_model
from r3rl.training.trainer import Trainer, train

from tests.trainer_fixtures import cli_overrides, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, layers=1, heads=2, kv_heads=1)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


def test_train_writes_run_folder(model_dir, tmp_path):
    cfg = tiny_config(model_dir, tmp_path / "run", eval_every=2, eval_examples=4)
    final = train(cfg, show_progress=False)
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (final / "config.json").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "reward_mean", "retry_success", "zero_adv_frac", "kl", "reflection_len", "lr", "tokens_per_s"):
        assert all(key in r for r in rows), key
    assert all(r["episodes"] == 16 for r in rows)  # batch 4 failures x G 4
    assert "eval/acc@2" in rows[1] and "eval/acc@2" not in rows[0]
    eps = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    assert eps and {"step", "reflection_text", "retry_text", "reward", "advantage"} <= set(eps[0])
    assert [p.name for p in sorted((run / "checkpoints").glob("step-*"))] == ["step-0000002", "step-0000004"]
    # the weights moved (the CoinTask gives groups with signal)
    base = weights(model_dir)
    assert any(not torch.equal(base[k], v) for k, v in weights(final).items() if k in base)


def test_resume_reaches_the_same_weights(model_dir, tmp_path, monkeypatch):
    straight = train(tiny_config(model_dir, tmp_path / "a"), show_progress=False)

    cfg = tiny_config(model_dir, tmp_path / "b")
    calls = {"n": 0}
    original = Trainer._backward

    def dying(self, episodes, sync):
        calls["n"] += 1
        if calls["n"] == 6:  # second micro-batch... of step 3: after the step-2 checkpoint
            raise KeyboardInterrupt("killed")
        return original(self, episodes, sync)

    monkeypatch.setattr(Trainer, "_backward", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    monkeypatch.setattr(Trainer, "_backward", original)
    assert latest_checkpoint(tmp_path / "b").name == "step-0000002"
    # a checkpoint half-written by a killed process is never taken for the latest
    (tmp_path / "b" / "checkpoints" / ".step-0000003.tmp").mkdir()
    (tmp_path / "b" / "checkpoints" / "step-0000009").mkdir()
    assert latest_checkpoint(tmp_path / "b").name == "step-0000002"
    resumed = train(cfg, resume=True, show_progress=False)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the log holds each step once


def test_lora_run_saves_an_adapter_and_merged_weights(model_dir, tmp_path):
    cfg = tiny_config(model_dir, tmp_path / "lora", lora=True, lora_r=4, lora_alpha=8, beta=0.01, steps=2,
                      merge_adapter=True, learning_rate=5e-2)
    final = train(cfg, show_progress=False)
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    merged = final.parent / "final-merged"
    assert (merged / "config.json").exists() and not (merged / "adapter_config.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kl"] >= 0.0
    # the adapter folder loads for evaluation like any model
    from r3rl.engine import load_engine

    engine = load_engine(str(final))
    assert engine.generate([[1, 2, 3]], __import__("r3rl.types", fromlist=["SamplingParams"]).SamplingParams(max_new_tokens=2, temperature=0))[0][0].token_ids


def _launch(args: list[str], cwd: Path, procs: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if procs:
        # accelerate's `--cpu --num_processes N` starts N processes only through MPI; its torchrun path
        # with ACCELERATE_USE_CPU=1 gives N CPU ranks over gloo (DistributedType.MULTI_CPU).
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "r3rl", *args]
    else:
        cmd = [sys.executable, "-m", "r3rl", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_match_one(model_dir, tmp_path):
    """accelerate launch --num_processes 2 --cpu (gloo): same update as one process on the same batch."""
    outs = {}
    for procs in (1, 2):
        cfg = tiny_config(model_dir, tmp_path / f"p{procs}", steps=2, save_every=0)
        cfg.failures.path = str(tmp_path / "failures.jsonl")
        if procs == 1:  # mine once, share the failure set so both runs train on the same batch
            from r3rl.engine import load_engine
            from r3rl.mining import mine
            from r3rl.rollout import Rollout
            from r3rl.tasks import load_task

            mine(Rollout(load_engine(str(model_dir)), load_task(cfg.task.name), cfg.generation, cfg.rollout), cfg.failures,
                 cfg.seed, show_progress=False)
        res = _launch(["train", *cli_overrides(cfg)], cwd=ROOT, procs=procs if procs > 1 else None)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        outs[procs] = tmp_path / f"p{procs}"
    replicas = json.loads((outs[2] / "replicas.json").read_text())
    assert replicas["processes"] == 2 and replicas["param_checksums"][0] == replicas["param_checksums"][1]
    one, two = weights(outs[1] / "final"), weights(outs[2] / "final")
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6, msg=k)
    base = weights(model_dir)
    assert any(not torch.equal(base[k], one[k]) for k in one if k in base)
    m1 = [json.loads(x) for x in (outs[1] / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (outs[2] / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward_mean"] for r in m1] == [r["reward_mean"] for r in m2]
    assert m1[0]["loss"] == pytest.approx(m2[0]["loss"], abs=1e-6)


@pytest.mark.slow
def test_cli_train_survives_a_kill(model_dir, tmp_path):
    """`r3rl train` killed with SIGKILL after a checkpoint resumes with --resume and ends like an unbroken run."""
    import signal
    import time

    cfg = tiny_config(model_dir, tmp_path / "straight", steps=4, save_every=1)
    assert _launch(["train", *cli_overrides(cfg)], cwd=ROOT).returncode == 0
    cfg.train.output_dir = str(tmp_path / "killed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "r3rl", "train", *cli_overrides(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "killed" / "checkpoints" / "step-0000002").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(tmp_path / "killed") is not None
    res = _launch(["train", "--resume", *cli_overrides(cfg)], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = weights(tmp_path / "straight" / "final"), weights(tmp_path / "killed" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_online_mode_with_several_updates_and_options(model_dir, tmp_path):
    """Failures drawn from the current policy each step; two optimizer passes per rollout batch
    (sampling-time log-probs as the old policy); Dr. GRPO options; gradient checkpointing."""
    cfg = tiny_config(model_dir, tmp_path / "online", steps=2, online=True, updates_per_batch=2,
                      advantage="mean_only", loss_aggregation="token_sum", gradient_checkpointing=True, save_every=0)
    final = train(cfg, show_progress=False)
    run = tmp_path / "online"
    assert not (run / "failures.jsonl").exists()  # nothing mined up front
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 < r["episodes"] <= 16 for r in rows)
    base = weights(model_dir)
    assert any(not torch.equal(base[k], v) for k, v in weights(final).items() if k in base)
