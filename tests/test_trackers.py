"""Trackers: every metrics.jsonl figure reaches TensorBoard (read back from the event files), and so do a
few episodes as text; W&B in offline mode likewise when it is installed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from r3rl.training.tracking import TABLE_COLUMNS, TEXT_TAG, episodes_markdown, log_episode_texts
from r3rl.types import Episode
from tests.trainer_fixtures import tiny_config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def numeric(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def episode(i: int, reflection: str = "I added the wrong column.") -> Episode:
    return Episode(example_id=f"ex{i}", group_id=f"g{i}", context_ids=[1], attempt_text="12 + 35 = 48",
                   attempt_ok=False, reflection_ids=[2], reflection_text=reflection, reflection_logprobs=[-0.5],
                   retry_text="<answer>47</answer>", retry_ok=i % 2 == 0, reward=float(i % 2 == 0),
                   advantage=0.5 if i % 2 == 0 else -0.5, attempt_reason="wrong sum", retry_reason="")


# ------------------------------------------------------------------------ TensorBoard
def test_tensorboard_holds_every_metric_and_the_episode_texts(model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from r3rl.training.trainer import train

    run = tmp_path / "run"
    cfg = tiny_config(model_dir, run, steps=3, save_every=0, eval_every=2, eval_examples=4,
                      report_to=["tensorboard"], log_episodes_per_step=2)
    train(cfg, show_progress=False)

    # accelerate writes the scalars under run/r3rl and the hparams into a sub-folder: read them all
    mux = EventMultiplexer(size_guidance={"scalars": 0, "tensors": 0}).AddRunsFromDirectory(str(run / "r3rl"))
    mux.Reload()
    scalars: dict[str, dict[int, float]] = {}
    texts: dict[int, str] = {}
    for name, tags in mux.Runs().items():
        acc = mux.GetAccumulator(name)
        for tag in tags["scalars"]:
            scalars.setdefault(tag, {}).update({ev.step: ev.value for ev in acc.Scalars(tag)})
        for tag in tags["tensors"]:
            if tag.startswith(TEXT_TAG):
                texts.update({ev.step: ev.tensor_proto.string_val[0].decode() for ev in acc.Tensors(tag)})

    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    checked = 0
    for row in rows:
        for key, value in numeric(row).items():
            assert key in scalars, f"{key} missing from the event files (tags: {sorted(scalars)})"
            got = scalars[key].get(row["step"])
            assert got is not None, f"{key} at step {row['step']} missing"
            # event files store float32
            assert got == float(np.float32(value)) or (math.isnan(value) and math.isnan(got)), (key, value, got)
            checked += 1
    assert "eval/acc@2" in scalars and sorted(scalars["eval/acc@2"]) == [2, 3]
    assert checked >= 3 * 13  # 13 figures a step at least (grad_norm, eval/* come on top)

    episodes = read_jsonl(run / "episodes.jsonl")
    assert sorted(texts) == [1, 2, 3]
    for step in (1, 2, 3):
        logged = [e for e in episodes if e["step"] == step]
        assert len(logged) == 2
        for e in logged:
            assert f"example `{e['example_id']}`" in texts[step]
            assert e["reflection_text"].strip()[:50] in texts[step]


def test_no_trackers_no_event_files(model_dir, tmp_path):
    from r3rl.training.trainer import train

    run = tmp_path / "run"
    train(tiny_config(model_dir, run, steps=1, save_every=0), show_progress=False)
    assert not (run / "r3rl").exists()


# ------------------------------------------------------------------------ text formatting
def test_markdown_keeps_backticks_inside_their_block():
    text = episodes_markdown([episode(0, reflection="use ``` fences ```` carefully")])
    assert "`````\nuse ``` fences ```` carefully\n`````" in text
    assert "### Episode 1: example `ex0`, reward 1, advantage +0.500, retry passed" in text
    assert "**Failed attempt** (wrong sum)" in text


def test_markdown_clips_runaway_text():
    text = episodes_markdown([episode(1, reflection="x" * 10_000)])
    assert "x" * 2_000 + " … [8000 more characters]" in text and "x" * 2_001 not in text


class _FakeTracker:
    def __init__(self, name: str):
        self.name, self.calls = name, []
        self.writer = self  # TensorBoardTracker.writer is the SummaryWriter

    def add_text(self, tag, text, global_step):
        self.calls.append(("text", tag, text, global_step))

    def flush(self):
        pass

    def log_table(self, table_name, columns, data, step):
        self.calls.append(("table", table_name, columns, data, step))


class _FakeAccelerator:
    def __init__(self, *names: str):
        self.trackers = [_FakeTracker(n) for n in names]


def test_each_tracker_gets_its_kind_of_text():
    acc = _FakeAccelerator("tensorboard", "wandb", "mlflow")
    eps = [episode(0), episode(1)]
    log_episode_texts(acc, eps, step=7)
    tb, wb, other = acc.trackers
    assert tb.calls == [("text", TEXT_TAG, episodes_markdown(eps), 7)]
    [(kind, name, columns, data, step)] = wb.calls
    assert (kind, name, columns, step) == ("table", TEXT_TAG, TABLE_COLUMNS, 7)
    assert data[0] == ["ex0", "12 + 35 = 48", "wrong sum", "I added the wrong column.", "<answer>47</answer>",
                       True, 1.0, 0.5]
    assert data[1][5:] == [False, 0.0, -0.5]
    assert other.calls == []
    log_episode_texts(acc, [], step=8)  # nothing to show: nothing logged
    assert len(tb.calls) == 1


# ------------------------------------------------------------------------ Weights & Biases
def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file.

    wandb ships no reader for it, and the file is a LevelDB-style log: a 7-byte
    header (":W&B", magic, version), then 32 KiB blocks of chunks, each with a
    4-byte checksum, a 2-byte little-endian length and a type (1 whole record,
    2 first / 3 middle / 4 last piece of one).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_every_metric_and_the_episode_tables(model_dir, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from r3rl.training.trainer import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    run = tmp_path / "run"
    train(tiny_config(model_dir, run, steps=2, save_every=0, report_to=["wandb"], log_episodes_per_step=2),
          show_progress=False)

    wandb.teardown()  # the wandb service writes the run file asynchronously; this waits until it is complete
    [run_file] = list((tmp_path / "wandb").rglob("*.wandb"))
    history: dict[int, dict[str, object]] = {}
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            row = history.setdefault(int(record.history.step.num), {})
            for item in record.history.item:  # a dict value arrives as one item per leaf, keyed by its path
                *parents, leaf = [item.key] if item.key else list(item.nested_key)
                node = row
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = json.loads(item.value_json)
    rows = read_jsonl(run / "metrics.jsonl")
    episodes = read_jsonl(run / "episodes.jsonl")
    for row in rows:
        assert row["step"] in history, f"step {row['step']} not in the W&B history (steps {sorted(history)})"
        logged = history[row["step"]]
        for key, value in numeric(row).items():
            assert logged[key] == pytest.approx(value, rel=1e-12), key
        table = logged[TEXT_TAG]
        assert table["_type"] == "table-file" and table["nrows"] == 2
        [table_file] = list(run_file.parent.rglob(Path(table["path"]).name))
        content = json.loads(table_file.read_text())
        assert content["columns"] == TABLE_COLUMNS
        assert [r[3] for r in content["data"]] == [e["reflection_text"] for e in episodes if e["step"] == row["step"]]
