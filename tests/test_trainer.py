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
from r3rl.training.trainer import Trainer, train

from tests.trainer_fixtures import cli_overrides, free_port, tiny_config

ROOT = Path(__file__).resolve().parents[1]


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
    # reflection diagnostics of each step's 16 reflections (the step's logged episodes are a sample of them)
    for r in rows:
        assert 0 < r["reflection_distinct_2"] <= 1 and 0 <= r["reflection_duplicate_share"] < 1
        assert r["reflection_len_p50"] <= r["reflection_len_p90"] <= r["reflection_len_max"]
        assert isinstance(r["reflection_most_repeated"], list)
    assert "eval/acc@2" in rows[1] and "eval/acc@2" not in rows[0]
    eps = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    assert eps and {"step", "reflection_text", "retry_text", "reward", "advantage"} <= set(eps[0])
    assert [p.name for p in sorted((run / "checkpoints").glob("step-*"))] == ["step-0000002", "step-0000004"]
    # the update's size: AdamW moves an entry by about lr per step (exactly lr * |g| / (|g| + eps) at step 1,
    # see test_accumulation_...), so after 4 steps at lr 1e-2 no entry moved by more than ~4 lr and most (87% measured) by > lr / 2
    base, after = weights(model_dir), weights(final)
    delta = torch.cat([(after[k] - base[k]).abs().flatten() for k in after if k in base])
    lr = cfg.train.learning_rate
    assert float(delta.max()) <= 4 * lr * 1.05, float(delta.max())
    assert float((delta > lr / 2).float().mean()) > 0.75


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
    # LoRA's B matrices start at zero, so at step 1 the policy IS the reference (adapters off): KL exactly 0;
    # after one update at lr 5e-2 it has moved: KL > 0
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] > 1e-6
    # the adapter folder loads for evaluation and computes what the trained model computes
    from r3rl.engine import load_engine
    from r3rl.types import SamplingParams

    engine = load_engine(str(final))
    merged_engine = load_engine(str(merged))
    base_engine = load_engine(str(model_dir))
    prompt = [[1, 2, 3, 4, 5]]
    ids = torch.tensor(prompt)
    with torch.no_grad():
        adapter_logits = engine.model(input_ids=ids).logits[0, -1]
        merged_logits = merged_engine.model(input_ids=ids).logits[0, -1]
        base_logits = base_engine.model(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(adapter_logits, merged_logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-4)  # the adapter is not a no-op
    greedy = SamplingParams(max_new_tokens=4, temperature=0)
    assert engine.generate(prompt, greedy)[0][0].token_ids == merged_engine.generate(prompt, greedy)[0][0].token_ids


def _launch(args: list[str], cwd: Path, procs: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if procs:
        # accelerate's `--cpu --num_processes N` starts N processes only through MPI; its torchrun path
        # with ACCELERATE_USE_CPU=1 gives N CPU ranks over gloo (DistributedType.MULTI_CPU).
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
               "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "r3rl", *args]
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
            from r3rl.environment.rollout import Rollout
            from r3rl.mining.failure_set import mine
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


def test_online_mode_with_several_updates_and_options(model_dir, tmp_path, monkeypatch):
    """Failures drawn from the current policy each step; two optimizer passes per rollout batch, whose
    "old" log-probs come from the training forward before the first update (at the sampling temperature),
    so the first pass has ratio exactly 1 and nothing clipped; Dr. GRPO options (advantage r - mean,
    token-sum loss); gradient checkpointing."""
    from r3rl.training import grpo

    calls = []
    original = grpo.policy_loss

    def recording(logp, logp_old, *args, **kwargs):
        calls.append((logp.detach().clone(), logp_old.clone()))
        return original(logp, logp_old, *args, **kwargs)

    monkeypatch.setattr(grpo, "policy_loss", recording)
    cfg = tiny_config(model_dir, tmp_path / "online", steps=2, online=True, updates_per_batch=2,
                      advantage="mean_only", loss_aggregation="token_sum", gradient_checkpointing=True, save_every=0,
                      log_episodes_per_step=16)
    cfg.generation.reflection_temperature = 0.7
    train(cfg, show_progress=False)
    run = tmp_path / "online"
    assert not (run / "failures.jsonl").exists()  # nothing mined up front
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 < r["episodes"] <= 16 for r in rows)
    assert all(r["clip_frac"] == 0.0 for r in rows)  # metrics are the first pass's
    # step 1: micro-batches 0, 1 (first pass), then 0, 1 again (second pass, after one optimizer step)
    assert len(calls) >= 4
    for logp, old in calls[:2]:
        assert torch.equal(logp, old)  # ratio exactly 1
    assert any(not torch.equal(logp, old) for logp, old in calls[2:4])  # the policy moved between passes
    torch.testing.assert_close(calls[2][1], calls[0][1], rtol=0, atol=0)  # the same old log-probs in pass two
    # mean_only: advantage = reward - group mean, without the std division (which would give e.g. 1.5, not 0.75)
    eps = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    groups: dict = {}
    for e in eps:
        groups.setdefault((e["step"], e["group_id"]), []).append(e)
    with_signal = 0
    for members in groups.values():
        mean = sum(e["reward"] for e in members) / len(members)
        for e in members:
            assert e["advantage"] == pytest.approx(e["reward"] - mean, abs=1e-9)
        with_signal += len({e["reward"] for e in members}) > 1
    assert with_signal > 0


def test_accumulation_steps_once_per_step_with_the_full_batch_gradient(model_dir, tmp_path):
    """batch 4 / micro 1 on one process: accelerate accumulates 4 micro-batches per optimizer step. Exactly
    train.steps optimizer steps run, and the first one sees the gradient of the whole batch's loss,
    -(1/(batch x G)) sum_seq A_seq mean_t grad log p_t (ratio 1, nothing clipped), computed here by hand
    on a fresh copy of the model from the same micro-batches."""
    from transformers import AutoModelForCausalLM

    from r3rl.training.logprobs import completion_logprobs

    cfg = tiny_config(model_dir, tmp_path / "acc", steps=3, batch_size=4, micro_batch_size=1, save_every=0,
                      max_grad_norm=0.0)
    trainer = Trainer(cfg, show_progress=False)
    assert trainer.acc.gradient_accumulation_steps == 4
    inner = trainer.opt.optimizer
    steps, first_grads, micros, before, after = [], {}, [], {}, {}
    original_step, original_micro = inner.step, trainer._micro

    def counting_step(*args, **kwargs):
        first = not steps
        if first:
            first_grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
            before.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        steps.append(1)
        out = original_step(*args, **kwargs)
        if first:
            after.update({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        return out

    def recording_micro(episodes):
        m = original_micro(episodes)
        micros.append(m)
        return m

    inner.step, trainer._micro = counting_step, recording_micro
    trainer.train()
    assert len(steps) == cfg.train.steps
    first = [m for m in micros[:4] if m.batch is not None]
    assert first, "the first step had no group with signal; pick another seed"
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    total = cfg.train.batch_size * cfg.rollout.group_size
    loss = 0.0
    for m in first:
        input_ids, attn, cmask = m.batch
        logp = completion_logprobs(ref, input_ids, attn, cmask)  # [B, T]
        seq_mean = logp.sum(1) / cmask.sum(1)  # [B]
        loss = loss - (m.advantages * seq_mean).sum() / total
    loss.backward()
    expected = dict(ref.named_parameters())
    assert first_grads.keys() <= expected.keys()
    for name, grad in first_grads.items():
        torch.testing.assert_close(grad, expected[name].grad, rtol=1e-4, atol=1e-7, msg=name)
    # the first AdamW step (bias-corrected m = g, v = g^2): delta = -lr * g / (|g| + eps), direction and size
    lr, eps = cfg.train.learning_rate, 1e-8
    for name, g in first_grads.items():
        torch.testing.assert_close(after[name] - before[name], -lr * g / (g.abs() + eps), rtol=1e-3, atol=1e-8, msg=name)


def _episode(group: str, reflection: list[int], reward: float):
    from r3rl.types import Episode

    return Episode(example_id="0", group_id=group, context_ids=[1, 2, 3], attempt_text="", attempt_ok=False,
                   reflection_ids=reflection, reflection_text="", reflection_logprobs=[0.0] * len(reflection),
                   retry_text="", retry_ok=reward > 0, reward=reward)


def test_zero_signal_group_keeps_its_kl_term(model_dir, tmp_path):
    """A group with equal rewards has advantage 0, so its policy term is 0, but with beta > 0 its KL term
    still pulls the moved policy back to the reference: loss = beta * sum_seq mean_t k3 / (batch x G)."""
    from r3rl.training.logprobs import completion_logprobs

    beta = 0.5
    cfg = tiny_config(model_dir, tmp_path / "kl", beta=beta, batch_size=2, micro_batch_size=2)
    cfg.rollout.group_size = 2
    trainer = Trainer(cfg, show_progress=False)
    with torch.no_grad():  # move the policy away from the frozen reference
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    micro = trainer._micro([_episode("g", [4, 5, 6], 1.0), _episode("g", [7, 8], 1.0)])
    assert micro.batch is not None and micro.advantages.tolist() == [0.0, 0.0]
    with trainer.acc.accumulate(trainer.policy):
        stats = trainer._backward(micro, None)
    with torch.no_grad():
        logp = completion_logprobs(trainer.model, *micro.batch)  # [2, T]
        ref = completion_logprobs(trainer.ref, *micro.batch)  # [2, T]
    mask = micro.batch[2].bool()
    # k3 = exp(ref - logp) - (ref - logp) - 1 per reflection token, by hand, row by row
    expected = 0.0
    for row in range(2):
        d = (ref[row][mask[row]] - logp[row][mask[row]]).double()
        expected += float((d.exp() - d - 1).mean())
    expected *= beta / (cfg.train.batch_size * cfg.rollout.group_size)
    assert expected > 1e-4
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trainer.model.parameters())
    # without a KL term the same group carries nothing and is left out of the backward
    trainer.cfg.train.beta = 0.0
    assert trainer._micro([_episode("g", [4, 5, 6], 1.0), _episode("g", [7, 8], 1.0)]).batch is None


def test_a_run_without_learning_signal_warns_once(model_dir, tmp_path):
    cfg = tiny_config(model_dir, tmp_path / "flat", steps=4, save_every=0)
    cfg.task.name = "tests.trainer_fixtures:NeverTask"
    with pytest.warns(Warning) as record:
        train(cfg, show_progress=False)
    from r3rl.training.trainer import NoLearningSignalWarning

    ours = [w for w in record if issubclass(w.category, NoLearningSignalWarning)]
    assert len(ours) == 1
    assert "rollout.group_size" in str(ours[0].message) and "reflection_temperature" in str(ours[0].message)
    rows = [json.loads(x) for x in (tmp_path / "flat" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["zero_adv_frac"] == 1.0 for r in rows)


def test_training_logprobs_are_those_of_the_sampling_temperature(model_dir, tmp_path):
    """The trainer's policy forward gives log softmax(logits / T) at the reflection temperature T."""
    from r3rl.training.grpo import build_completion_batch
    from r3rl.training.logprobs import full_logits_logprobs

    cfg = tiny_config(model_dir, tmp_path / "t")
    cfg.generation.reflection_temperature = 0.5
    trainer = Trainer(cfg, show_progress=False)
    batch = build_completion_batch([[1, 2, 3]], [[4, 5]], trainer.tok.pad_token_id)
    with torch.no_grad():
        got = trainer.policy(*batch)  # [1, T]
        logits = trainer.model(input_ids=batch[0]).logits[0, 2:4].float() / 0.5  # [2, V] predicting tokens 4, 5
        by_hand = torch.log_softmax(logits, -1)[torch.arange(2), torch.tensor([4, 5])]  # [2]
        untempered = full_logits_logprobs(trainer.model, *batch)[0, 3:5]
    torch.testing.assert_close(got[0, 3:5], by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[0, 3:5], untempered)


def test_verifier_errors_are_counted_in_the_metrics(model_dir, tmp_path):
    from tests.trainer_fixtures import BrokenRetryCoinTask

    BrokenRetryCoinTask.raised = 0
    cfg = tiny_config(model_dir, tmp_path / "run", steps=2, save_every=0)
    cfg.task.name = "tests.trainer_fixtures:BrokenRetryCoinTask"
    cfg.rollout.max_verifier_errors = 1000
    train(cfg, show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    counts = [r["verifier_errors"] for r in rows]
    assert counts[-1] > 0 and counts == sorted(counts)  # cumulative, and the broken retries were counted
    assert counts[-1] == BrokenRetryCoinTask.raised


def test_the_trainer_engine_honours_shared_prefix_attention(model_dir, tmp_path):
    """generation.shared_prefix_attention reaches the engine training generates with (it once built its own
    engine without it, while `r3rl plan` sized memory from the configured value)."""
    for value, expected in (("on", True), ("off", False)):
        cfg = tiny_config(model_dir, tmp_path / value, steps=1)
        cfg.generation.shared_prefix_attention = value
        assert Trainer(cfg, show_progress=False).engine.shared_prefix_attention is expected, value


def test_sampling_logprob_mismatch_is_logged_per_step(model_dir, tmp_path):
    """float32 on CPU: the engine's sampling log-probs and the training forward's agree to float32 noise;
    both columns are written; at another reflection temperature they are not comparable: None."""
    train(tiny_config(model_dir, tmp_path / "f32", steps=2, save_every=0), show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "f32" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert 0.0 <= r["logprob_diff_mean"] <= r["logprob_diff_max"] < 1e-4, r
    cfg = tiny_config(model_dir, tmp_path / "t07", steps=1, save_every=0)
    cfg.generation.reflection_temperature = 0.7
    train(cfg, show_progress=False)
    [row] = [json.loads(x) for x in (tmp_path / "t07" / "metrics.jsonl").read_text().splitlines()]
    assert row["logprob_diff_mean"] is None and row["logprob_diff_max"] is None


def test_truncated_importance_sampling_weights_the_policy_term(model_dir, tmp_path):
    """train.sampling_correction=tis: with ratio 1 the loss is -sum_seq A_seq mean_t w_t / (batch x G),
    w_t = min(exp(logp_train - logp_sampling), cap). Sampling log-probs set to logp_train - log 3 (row 0,
    w = min(3, 2) = 2, capped) and logp_train - log 1.5 (row 1, w = 1.5)."""
    import math

    from r3rl.training.logprobs import completion_logprobs

    cfg = tiny_config(model_dir, tmp_path / "tis", batch_size=2, micro_batch_size=2, sampling_correction="tis",
                      sampling_correction_cap=2.0)
    cfg.rollout.group_size = 2
    trainer = Trainer(cfg, show_progress=False)
    episodes = [_episode("g", [4, 5, 6], 1.0), _episode("g", [7, 8], 0.0)]
    probe = trainer._micro(episodes)
    with torch.no_grad():
        logp = completion_logprobs(trainer.model, *probe.batch)  # [2, T]
    mask = probe.batch[2].bool()
    for row, (e, shift) in enumerate(zip(episodes, (math.log(3.0), math.log(1.5)))):
        e.reflection_logprobs = (logp[row][mask[row]] - shift).tolist()
    micro = trainer._micro(episodes)
    with trainer.acc.accumulate(trainer.policy):
        stats = trainer._backward(micro, None)
    a0, a1 = micro.advantages.tolist()
    expected = -(a0 * 2.0 + a1 * 1.5) / (cfg.train.batch_size * cfg.rollout.group_size)
    assert abs(expected) > 0.05
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    # the logged mismatch of the same tokens: |log 3| on row 0's 3 tokens, |log 1.5| on row 1's 2
    assert stats["diff_max"] == pytest.approx(math.log(3.0), rel=1e-5)
    assert stats["diff_sum"] / stats["diff_tokens"] == pytest.approx((3 * math.log(3.0) + 2 * math.log(1.5)) / 5, rel=1e-5)
    # without the correction the same micro-batch's loss is -(a0 + a1) / (batch x G) = 0: the advantages cancel
    trainer.cfg.train.sampling_correction = "none"
    with trainer.acc.accumulate(trainer.policy):
        assert trainer._backward(trainer._micro(episodes), None)["loss"] == pytest.approx(0.0, abs=1e-7)


def test_policy_setup_uses_the_current_transformers_names(model_dir):
    """transformers 5.24 deprecates gradient_checkpointing_enable / is_gradient_checkpointing (FutureWarning):
    building the policy with activation checkpointing, full or LoRA, warns nothing of the kind."""
    import warnings

    from r3rl.config import Config
    from r3rl.training.policy import build_policy

    cfg = Config()
    cfg.model.name_or_path = str(model_dir)
    for lora in (False, True):
        cfg.train.lora, cfg.train.gradient_checkpointing = lora, True
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            model, _, _ = build_policy(cfg.model, cfg.train, torch.device("cpu"))
        inner = model.get_base_model() if lora else model
        assert inner.is_activation_checkpointing if hasattr(inner, "is_activation_checkpointing") else inner.is_gradient_checkpointing


def test_sampling_correction_settings_are_checked():
    from r3rl.config import ConfigError, load_config

    assert load_config(None, []).train.sampling_correction == "none"  # off by default (see trainer.py)
    with pytest.raises(ConfigError, match="train.sampling_correction: 'is' is not one of none, tis"):
        load_config(None, ["train.sampling_correction=is"])
    with pytest.raises(ConfigError, match="train.sampling_correction_cap: must be > 0"):
        load_config(None, ["train.sampling_correction=tis", "train.sampling_correction_cap=0"])
    with pytest.raises(ConfigError, match="generation.reflection_temperature=0.7; set it to 1"):
        load_config(None, ["train.sampling_correction=tis", "generation.reflection_temperature=0.7"])
    assert load_config(None, ["train.sampling_correction=tis"]).train.sampling_correction_cap == 2.0
