"""Sharded full fine-tuning (FSDP2) for real: 2 CPU processes over gloo under `accelerate launch
--config_file configs/accelerate/fsdp2.yaml`, against the DDP run of the same config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from r3rl.errors import InputError
from r3rl.training.sharding import check_supported

from tests.test_trainer import weights
from r3rl.types import Verdict

from tests.trainer_fixtures import CoinTask, _flag_retries_of, cli_overrides, free_port, tiny_config

ROOT = Path(__file__).resolve().parents[1]


class RankSplitTask(CoinTask):
    """CoinTask, except that on rank 1 every retry passes: rank 1's groups all have equal rewards (no row in
    its loss) while rank 0's carry signal, so the two ranks' micro-batches disagree."""

    name = "rank-split"
    retrying = False  # True while Rollout.reflect_and_retry runs (trainer_fixtures._flag_retries_of)

    def __init__(self, **options):
        super().__init__(**options)
        _flag_retries_of(RankSplitTask)

    def verify(self, ex, completion):
        if RankSplitTask.retrying and os.environ.get("RANK") == "1":
            return Verdict(True, "")
        return super().verify(ex, completion)


def _launch(args: list[str], accelerate_config: str | None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`r3rl train` on 2 CPU ranks (gloo): DDP, or the accelerate config's distributed type."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    how = ["--config_file", str(ROOT / accelerate_config)] if accelerate_config else ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", str(free_port()),  # not torchrun's 29500, which another test run may hold
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "r3rl", "train", *args]
    # its own session, so a hung run's ranks (children of torchrun) are killed with it, not left behind
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"r3rl train did not finish in {timeout} s (ranks out of step?): {out[-1500:]}{err[-1500:]}")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_unsupported_sharding_is_refused_in_one_sentence():
    check_supported(None, lora=True)  # DDP / ZeRO-2: nothing to refuse
    check_supported("fsdp2", lora=False)
    for kind, lora, words in (("fsdp1", False, "fsdp_version: 2"), ("zero3", False, "ZeRO-3"),
                              ("fsdp2", True, "train.lora=true")):
        with pytest.raises(InputError, match=words):
            check_supported(kind, lora)


def _config(model_dir: Path, root: Path, name: str, **train):
    cfg = tiny_config(model_dir, root / name, steps=2, **train)
    cfg.failures.path = str(root / "failures.jsonl")  # one failure set: every run trains on the same batches
    # the per-row layout in every run: sharding falls back to it, and the grouped layout's float32
    # reassociation (tests/test_prefix_group_training.py) is not what these runs compare
    cfg.train.shared_prefix = "off"
    return cfg


@pytest.fixture(scope="module")
def ddp_run(model_dir, tmp_path_factory) -> Path:
    """The reference: 2 steps of `r3rl train` on 2 DDP processes (its folder's parent holds the failure set)."""
    from r3rl.engine import load_engine
    from r3rl.environment.rollout import Rollout
    from r3rl.mining.failure_set import mine
    from r3rl.tasks import load_task

    root = tmp_path_factory.mktemp("runs")
    cfg = _config(model_dir, root, "ddp", save_every=0)
    mine(Rollout(load_engine(str(model_dir)), load_task(cfg.task.name), cfg.generation, cfg.rollout), cfg.failures,
         cfg.seed, show_progress=False)
    _launch(cli_overrides(cfg), None)
    return root / "ddp"


def _assert_like_ddp(got: dict[str, torch.Tensor], ddp: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ddp.keys()
    moved = 0.0
    for k in ddp:
        # float32; FSDP2 reduce-scatters gradient shards and ZeRO-2 reduces gradient partitions where DDP
        # all-reduces whole buckets, and the clipping norm is summed from per-shard parts, so sums may be
        # added in another order: ~1e-7 relative per gradient, which Adam's first steps (update ~ lr x g / |g|)
        # pass on at most as ~1e-6 of the lr 1e-2 moves. (Measured with 2 ranks: 0.0, sums of two terms are exact.)
        torch.testing.assert_close(got[k], ddp[k], rtol=1e-5, atol=1e-6, msg=k)
        moved = max(moved, float((ddp[k] - base[k]).abs().max()))
    assert moved > 1e-3  # the runs trained (2 steps at lr 1e-2), so equal weights are not both the base


@pytest.mark.slow
def test_fsdp2_two_processes_match_ddp_and_resume(model_dir, ddp_run):
    """2 steps of FSDP2 reach the DDP run's weights; its final model loads with from_pretrained; a run
    resumed from its sharded step-1 checkpoint ends with the same weights as the uninterrupted one, and so
    does an unsharded run resumed from it."""
    tmp_path = ddp_run.parent

    def config(name: str, **train):
        return _config(model_dir, tmp_path, name, **train)

    t0 = time.perf_counter()
    fsdp = config("fsdp", save_every=1)
    _launch(cli_overrides(fsdp), "configs/accelerate/fsdp2.yaml")
    print(f"FSDP2 run: {time.perf_counter() - t0:.1f} s")
    assert json.loads((tmp_path / "fsdp" / "replicas.json").read_text())["sharded"] is True
    fsdp_w = weights(tmp_path / "fsdp" / "final")
    # the hf engine generated step 2 from its unsharded copy, refreshed after step 1: its sampling log-probs are
    # the trained model's (measured ~1e-6 apart; 0.2 when the copy is not refreshed and keeps step 1's weights)
    rows = [json.loads(x) for x in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["weight_sync_s"] is not None for r in rows)
    assert rows[1]["logprob_diff_max"] < 1e-4
    _assert_like_ddp(fsdp_w, weights(ddp_run / "final"), weights(model_dir))
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final")
    for k, v in loaded.state_dict().items():
        if k in fsdp_w:
            torch.testing.assert_close(v, fsdp_w[k], rtol=0, atol=0, msg=k)

    # resume: the sharded step-1 checkpoint (model and optimizer shards, RNG states) continues to the same end
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000002")
    shutil.rmtree(resumed / "final")
    assert (resumed / "checkpoints" / "step-0000001" / "pytorch_model_fsdp_0" / ".metadata").is_file()
    res = _launch([*cli_overrides(config("resumed", save_every=1)), "--resume"], "configs/accelerate/fsdp2.yaml")
    assert "resumed from" in res.stdout + res.stderr
    again = weights(resumed / "final")
    for k in fsdp_w:
        torch.testing.assert_close(again[k], fsdp_w[k], rtol=0, atol=1e-7, msg=k)

    # and an unsharded run (here one process, the DDP code path) resumes the same sharded checkpoint
    from r3rl.training.trainer import train

    replicated = tmp_path / "replicated"
    shutil.copytree(resumed, replicated)
    shutil.rmtree(replicated / "checkpoints" / "step-0000002")
    shutil.rmtree(replicated / "final")
    train(config("replicated", save_every=1), resume=True, show_progress=False)
    for k, v in weights(replicated / "final").items():
        torch.testing.assert_close(v, fsdp_w[k], rtol=1e-5, atol=1e-6, msg=k)  # the DDP / FSDP2 tolerance above


@pytest.fixture()
def deepspeed_installed():
    pytest.importorskip("deepspeed")


@pytest.mark.slow
def test_deepspeed_zero2_two_processes_match_ddp(deepspeed_installed, model_dir, ddp_run):
    """DeepSpeed ZeRO-2 (configs/accelerate/deepspeed-zero2.yaml) on 2 CPU ranks: 2 steps reach the DDP
    run's weights. DeepSpeed is an optional extra (r3rl[deepspeed]; on CPU it compiles its shared-memory
    communication op on first use, minutes on 2 cores), so without it this test skips."""
    cfg = _config(model_dir, ddp_run.parent, "zero2", save_every=0)
    _launch(cli_overrides(cfg), "configs/accelerate/deepspeed-zero2.yaml")
    _assert_like_ddp(weights(ddp_run.parent / "zero2" / "final"), weights(ddp_run / "final"), weights(model_dir))


@pytest.mark.slow
def test_fsdp2_rank_with_nothing_to_learn_keeps_in_step(model_dir, ddp_run):
    """Under FSDP every forward and backward all-gathers each layer's weights, so a rank whose micro-batch has
    no row in the loss must still run one, on accumulating micro-batches too (4 micro-batches per step, 2 per
    rank): rank 1's retries all pass, rank 0's do not. Before the fix the ranks' collectives disagreed."""
    cfg = _config(model_dir, ddp_run.parent, "split", save_every=0, batch_size=8, updates_per_batch=2)
    cfg.task.name = "tests.test_fsdp:RankSplitTask"
    cfg.failures.reuse = "any"  # the coin failure set: RankSplitTask judges first attempts as CoinTask does
    _launch(cli_overrides(cfg), "configs/accelerate/fsdp2.yaml", timeout=150)
    rows = [json.loads(x) for x in (ddp_run.parent / "split" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["zero_adv_frac"] >= 0.5 for r in rows)  # rank 1's half of the groups: no signal
    assert all(r["zero_adv_frac"] < 1.0 for r in rows)  # rank 0's: some


def test_sharded_checkpoint_metadata_never_runs_code(tmp_path):
    """torch reads a torch.distributed.checkpoint .metadata file with plain pickle.load; r3rl reads it first
    allowing only what torch writes there, so a crafted one is refused and its payload never runs."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from r3rl.training.checkpoint import check_dcp_metadata

    real = tmp_path / "pytorch_model_fsdp_0"
    dcp.save({"model": {"w": torch.ones(2, 3), "n": torch.zeros((), dtype=torch.int64)}}, checkpoint_id=str(real),
             no_dist=True)
    check_dcp_metadata(real / ".metadata")  # what torch writes passes (the FSDP2 tests resume real ones)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (real / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(InputError, match=r"\.metadata: refused, it names (posix|os)\.system"):
        check_dcp_metadata(real / ".metadata")
    assert not marker.exists()
