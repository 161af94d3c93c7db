"""`r3rl mine` and `r3rl eval` with generation.backend=vllm, as a user runs them (subprocesses), a vLLM
mine killed with kill -9 and resumed, and the two one-sentence errors: vLLM missing, vLLM unable to
run the model.

Greedy settings, so each command's records must equal the hf backend's on the same model (vLLM's
CPU build seeds no single request: a re-sampled chunk would differ at temperature > 0, docs/vllm.md).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from r3rl.cli import main
from r3rl.config import GenerationConfig, ModelConfig
from tests.vllm.conftest import needs_vllm, vllm_settings

ROOT = Path(__file__).resolve().parents[2]
VLLM = ["generation.vllm.enforce_eager=true", "generation.vllm.max_model_len=512", "generation.vllm.block_size=32",
        "generation.vllm.cpu_kvcache_space_gb=1", "generation.vllm.dtype=float32"]


def common(model: str) -> list[str]:
    # 3-digit sums: the demo model (trained on 2 digits) fails most of them, so mining finds failures
    return [f"model.name_or_path={model}", "task.name=addition", "task.options.digits=3", "seed=0", "generation.attempt_temperature=0",
            "generation.reflection_temperature=0", "generation.retry_temperature=0", "generation.max_attempt_tokens=16",
            "generation.max_reflection_tokens=32", "generation.max_retry_tokens=16"]


def mine_args(model: str, tmp: Path, backend: str) -> list[str]:
    return ["mine", *common(model), f"generation.backend={backend}", f"failures.path={tmp / backend / 'f.jsonl'}",
            "failures.num_examples=12", "failures.attempts_per_example=1", "failures.chunk_size=6"]


def eval_args(model: str, tmp: Path, backend: str) -> list[str]:
    return ["eval", *common(model), f"generation.backend={backend}", f"eval.output_dir={tmp / backend / 'eval'}",
            "eval.num_examples=6", "eval.chunk_size=3"]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A local model folder (the demo model, copied: a user's folder, not the registered alias)."""
    import shutil

    from r3rl.demo import model_path

    return shutil.copytree(model_path(), tmp_path_factory.mktemp("cli") / "model")


def r3rl_process(args: list[str], cwd: Path, fault: str = "") -> subprocess.Popen:
    """`r3rl ARGS` in a fresh process; with `fault`, under tests.reliability.faults (e.g. jsonl:5 = kill -9
    half-way through writing the 5th JSONL line)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "R3RL_FAULT": fault}
    entry = "tests.reliability.faults" if fault else "r3rl"
    return subprocess.Popen([sys.executable, "-m", entry, *args, *VLLM], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(p: subprocess.Popen) -> tuple[int, str]:
    _, err = p.communicate(timeout=600)
    return p.returncode, err


def two_ranks(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`r3rl ARGS` under accelerate with 2 CPU processes, each rank starting its own in-process vLLM."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "VLLM_LOGGING_LEVEL": "INFO"}  # vLLM says at INFO which executor each rank uses
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "r3rl"]
    proc = subprocess.run([*launch, *args, *VLLM], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("Using external launcher") == 2  # one engine per rank
    return proc


def coin_train_args(model_dir: Path, out: Path, micro_batch_size: int = 4) -> list[str]:
    """2 steps of full fine-tuning on vLLM. CoinTask (tests/trainer_fixtures.py): a retry passes when its
    length is even, ~50% for any model, so groups carry signal and each step must move the weights."""
    return ["train", f"model.name_or_path={model_dir}", "task.name=tests.trainer_fixtures:CoinTask", "seed=0",
            "generation.backend=vllm", "generation.max_attempt_tokens=16", "generation.max_reflection_tokens=24",
            "generation.max_retry_tokens=16", f"failures.path={out / 'f.jsonl'}", "failures.num_examples=8",
            "failures.attempts_per_example=1", f"train.output_dir={out}", "train.steps=2", "train.batch_size=4",
            f"train.micro_batch_size={micro_batch_size}", "rollout.group_size=4", "train.lora=false",
            "train.beta=0.0", "train.learning_rate=1e-3", "train.save_every=0", "train.eval_every=0"]


def assert_synced_every_step(rows: list[dict], label: str) -> None:
    """Both steps logged, a weight push after each, and vLLM's sampling log-probs within 1e-3 of the training
    forward's (float32, temperature 1): a large gap at step 2 would mean vLLM sampled from stale weights."""
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["weight_sync_s"] is not None and r["weight_sync_s"] > 0 for r in rows)
    print(f"{label}: vLLM vs training log-probs per step (mean, max):",
          [(r["logprob_diff_mean"], r["logprob_diff_max"]) for r in rows])
    assert all(r["logprob_diff_max"] is not None and r["logprob_diff_max"] < 1e-3 for r in rows)


def test_mine_and_eval_run_with_the_vllm_backend_match_hf_and_mining_survives_kill_9(model_dir, tmp_path):
    needs_vllm()
    model = str(model_dir)
    # mining killed half-way through its 5th record, and an evaluation, side by side
    killed_mine = r3rl_process(mine_args(model, tmp_path, "vllm"), tmp_path, fault="jsonl:5")
    evaluation = r3rl_process(eval_args(model, tmp_path, "vllm"), tmp_path)
    rc, err = finished(killed_mine)
    assert rc == -signal.SIGKILL, err[-3000:]
    partial = (tmp_path / "vllm" / "f.jsonl").read_text()
    assert partial.count("\n") == 4 and not partial.endswith("\n")  # 4 records and half of the 5th
    rc, err = finished(evaluation)
    assert rc == 0, err[-3000:]
    rc, err = finished(r3rl_process(mine_args(model, tmp_path, "vllm"), tmp_path))  # the same command resumes
    assert rc == 0, err[-3000:]
    # the same commands with the hf backend, uninterrupted, in this process (no vLLM involved)
    assert main(mine_args(model, tmp_path, "hf")) == 0
    assert main(eval_args(model, tmp_path, "hf")) == 0
    mined = {b: lines(tmp_path / b / "f.jsonl") for b in ("vllm", "hf")}
    assert len(mined["hf"]) == 12 and mined["vllm"] == mined["hf"]  # nothing lost, nothing duplicated
    results = {b: json.loads((tmp_path / b / "eval" / "results.json").read_text()) for b in ("vllm", "hf")}
    for key in ("acc@1", "acc@2"):
        assert results["vllm"][key] == results["hf"][key], key
    episodes = {b: lines(tmp_path / b / "eval" / "episodes.jsonl") for b in ("vllm", "hf")}
    assert len(episodes["vllm"]) == 6
    assert [e.get("retry_text") for e in episodes["vllm"]] == [e.get("retry_text") for e in episodes["hf"]]


def test_without_vllm_the_error_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed (the default environment)
    from r3rl.engine.vllm import VLLMError, import_vllm

    with pytest.raises(VLLMError, match=r"r3rl\[vllm\].*make install-vllm"):
        import_vllm()


def test_a_model_vllm_cannot_run_names_the_model_and_the_hf_fallback(tmp_path):
    needs_vllm()
    from r3rl.demo.tiny import save_tiny_model
    from r3rl.engine.vllm import VLLMEngine, VLLMError

    folder = save_tiny_model(tmp_path / "h16", hidden_size=32, layers=1, heads=2, kv_heads=1)  # head_dim 16
    with pytest.raises(VLLMError, match=r"cannot run model .*h16.*generation\.backend=hf"):
        VLLMEngine.from_config(GenerationConfig(backend="vllm", vllm=vllm_settings()), ModelConfig(name_or_path=str(folder)))


@pytest.mark.slow
def test_two_processes_under_accelerate_each_with_its_own_engine_mine_what_one_hf_process_mines(model_dir, tmp_path):
    """Each rank starts its own in-process vLLM (vLLM's external_launcher, as TRL's colocate mode) and
    mines its share of the chunks; rank 0 writes the one failure set."""
    needs_vllm()
    model = str(model_dir)
    two_ranks(mine_args(model, tmp_path, "vllm"), tmp_path)
    assert main(mine_args(model, tmp_path, "hf")) == 0
    assert lines(tmp_path / "vllm" / "f.jsonl") == lines(tmp_path / "hf" / "f.jsonl")


def test_train_with_the_vllm_backend_syncs_the_weights_every_step(model_dir, tmp_path):
    """`r3rl train generation.backend=vllm`: rollouts on vLLM, the policy's weights pushed after every
    optimizer step (weight_sync_s in metrics.jsonl), and the trained model differs from the base."""
    needs_vllm()
    from safetensors.torch import load_file

    out = tmp_path / "train"
    rc, err = finished(r3rl_process(coin_train_args(model_dir, out), tmp_path))
    assert rc == 0, err[-3000:]
    assert_synced_every_step(lines(out / "metrics.jsonl"), "1 process")
    base = load_file(str(Path(model_dir) / "model.safetensors"))
    final = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch_equal(base[k], final[k]) for k in final if k in base)


def test_two_ranks_train_each_syncing_its_own_vllm_engine_every_step(model_dir, tmp_path):
    """TRL's colocate pattern under accelerate: each rank samples with its own in-process vLLM and pushes
    its (all-reduced, identical) weights into it after every step. The log-prob gap is the max over both
    ranks (metrics reduce it with max), so a rank whose engine kept the old weights would show at step 2
    (seen failing with rank 1's sync removed: max gap 3.6 at step 2, against 1e-5 with both syncing). 40 s."""
    needs_vllm()
    out = tmp_path / "train"
    two_ranks(coin_train_args(model_dir, out, micro_batch_size=2), tmp_path, timeout=900)
    assert_synced_every_step(lines(out / "metrics.jsonl"), "2 ranks")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_eval_with_vllm_killed_with_kill_9_resumes_to_the_uninterrupted_records(model_dir, tmp_path):
    """kill -9 on entry to the second chunk's reflections; the same command resumes after the first chunk and
    ends with the records an uninterrupted hf evaluation writes (greedy: both backends agree)."""
    needs_vllm()
    model = str(model_dir)
    rc, err = finished(r3rl_process(eval_args(model, tmp_path, "vllm"), tmp_path, fault="reflect:2"))
    assert rc == -signal.SIGKILL, err[-3000:]
    out = tmp_path / "vllm" / "eval"
    assert len(lines(out / "episodes.jsonl")) == 3 and not (out / "results.json").exists()  # the first chunk only
    rc, err = finished(r3rl_process(eval_args(model, tmp_path, "vllm"), tmp_path))
    assert rc == 0, err[-3000:]
    assert main(eval_args(model, tmp_path, "hf")) == 0
    got, want = lines(out / "episodes.jsonl"), lines(tmp_path / "hf" / "eval" / "episodes.jsonl")
    assert [(e["example_id"], e["sample"]) for e in got] == [(e["example_id"], e["sample"]) for e in want]  # none lost or twice
    assert [e["retry_text"] for e in got] == [e["retry_text"] for e in want]


def test_train_with_vllm_killed_with_kill_9_resumes_without_losing_or_repeating_a_step(model_dir, tmp_path):
    """kill -9 on entry to step 3's rollouts (checkpoint at step 2); `--resume` pushes the checkpoint's weights
    into the new vLLM engine and finishes: every step logged once, the final model saved."""
    needs_vllm()
    out = tmp_path / "train"
    args = ["train", f"model.name_or_path={model_dir}", "task.name=tests.trainer_fixtures:CoinTask", "seed=0",
            "generation.backend=vllm", "generation.max_attempt_tokens=8", "generation.max_reflection_tokens=8",
            "generation.max_retry_tokens=8", f"failures.path={out / 'f.jsonl'}", "failures.num_examples=8",
            "failures.attempts_per_example=1", f"train.output_dir={out}", "train.steps=3", "train.batch_size=4",
            "train.micro_batch_size=4", "rollout.group_size=2", "train.lora=false", "train.beta=0.0",
            "train.learning_rate=1e-3", "train.save_every=1", "train.eval_every=0"]
    rc, err = finished(r3rl_process(args, tmp_path, fault="reflect:3"))
    assert rc == -signal.SIGKILL, err[-3000:]
    assert [r["step"] for r in lines(out / "metrics.jsonl")] == [1, 2] and not (out / "final").exists()
    rc, err = finished(r3rl_process([*args, "--resume"], tmp_path))
    assert rc == 0, err[-3000:]
    rows = lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["weight_sync_s"] for r in rows)
    assert (out / "final" / "model.safetensors").is_file()
