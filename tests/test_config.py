"""Config: renamed keys keep working with a warning, every field is documented, presets build what they select."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from r3rl.cli import main
from r3rl.config import Config, ConfigError, describe_fields, load_config, validate_training

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("old,new,value,expected", [
    ("mine.output", "failures.path", "x.jsonl", "x.jsonl"),
    ("train.failures", "failures.path", "y.jsonl", "y.jsonl"),
    ("mine.num_examples", "failures.num_examples", 7, 7),
    ("mine.attempts_per_example", "failures.attempts_per_example", 5, 5),
    ("mine.max_failures_per_example", "failures.max_per_example", 3, 3),
    ("train.episodes_per_step", "train.log_episodes_per_step", 9, 9),
    ("train.advantage", "train.advantage", "dr_grpo", "mean_only"),
    ("train.loss_aggregation", "train.loss_aggregation", "dr_grpo", "token_sum"),
    ("train.loss_aggregation", "train.loss_aggregation", "grpo", "sequence_mean"),
    ("generation.half_matmul", "generation.cpu_matmul", "native", "native"),
])
def test_old_names_still_work_with_a_warning(tmp_path, old, new, value, expected):
    section, key = new.split(".")
    with pytest.warns(FutureWarning, match="removed in r3rl 0.3"):
        cfg = load_config(None, [f"{old}={value}"])
    assert getattr(getattr(cfg, section), key) == expected
    old_section, old_key = old.split(".")
    yaml_file = tmp_path / "old.yaml"
    yaml_file.write_text(f"{old_section}:\n  {old_key}: {value}\n")
    with pytest.warns(FutureWarning, match=old if old != new else str(value)):
        cfg = load_config(yaml_file)
    assert getattr(getattr(cfg, section), key) == expected


def test_new_names_load_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(None, ["failures.path=z.jsonl", "train.advantage=mean_only", "train.log_episodes_per_step=2"])
    assert (cfg.failures.path, cfg.train.advantage, cfg.train.log_episodes_per_step) == ("z.jsonl", "mean_only", 2)


def test_an_empty_old_train_failures_is_dropped_silently():
    # `train.failures=` used to mean "mine into output_dir first"; failures.path now always says where
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(None, ["train.failures="]).failures.path == Config().failures.path


def test_config_docs_list_every_field_with_default_and_doc(capsys):
    assert main(["config", "--docs", "train.steps=7"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = describe_fields()
    assert len(out) == len(rows) and len(rows) > 60
    assert all(doc for _, _, doc in rows), [name for name, _, doc in rows if not doc]
    line = next(x for x in out if x.startswith("train.steps "))
    assert "= 7" in line and "Optimizer steps." in line
    assert any(x.startswith("failures.path = runs/failures.jsonl") for x in out)


def test_an_unknown_renamed_section_key_still_names_the_closest():
    with pytest.raises(ConfigError, match="Did you mean: attempts_per_example"):
        load_config(None, ["failures.attempts_per_exmple=3"])


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_builds_the_policy_it_selects(preset, model_dir):
    """The preset's own train section (LoRA or full, KL or not) on a tiny stand-in for its model."""
    from r3rl.training.policy import build_policy, is_peft

    cfg = load_config(preset, [f"model.name_or_path={model_dir}", "model.dtype=float32"])
    model, tok, ref = build_policy(cfg.model, cfg.train, torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, preset
    if cfg.train.lora:
        assert is_peft(model) and ref is None  # the reference is the base with adapters disabled
        assert all("lora_" in n for n in trainable)
        assert len(trainable) < len(list(model.parameters()))
    else:
        assert not is_peft(model)
        assert trainable == {n for n, _ in model.named_parameters()}
        assert (ref is not None) == (cfg.train.beta > 0)
        if ref is not None:
            assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert cfg.train.batch_size % cfg.train.micro_batch_size == 0


def test_the_core_defaults_name_no_model_or_task_and_say_what_to_set(capsys):
    cfg = Config()
    assert cfg.model.name_or_path == "" and cfg.task.name == ""
    assert main(["mine"]) == 2
    assert "no task given: set task.name" in capsys.readouterr().err
    assert main(["eval", "task.name=countdown"]) == 2
    assert "no model given: set model.name_or_path" in capsys.readouterr().err


def test_the_demo_registers_its_model_and_task_through_the_public_entry_points():
    from importlib.metadata import entry_points

    from r3rl.demo import model_path
    from r3rl.engine.loading import register_model_alias, resolve_model_name
    from r3rl.tasks import available_tasks

    assert {ep.name: ep.value for ep in entry_points(group="r3rl.models")}["demo"] == "r3rl.demo:model_path"
    assert available_tasks()["addition"] == "r3rl.demo.addition:AdditionTask"
    assert resolve_model_name("demo") == model_path() and Path(model_path(), "config.json").is_file()
    register_model_alias("my-model", "/models/mine")
    assert resolve_model_name("my-model") == "/models/mine"
    assert resolve_model_name("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"


def test_no_core_module_imports_the_demo():
    core = [p for p in (ROOT / "r3rl").rglob("*.py") if "demo" not in p.relative_to(ROOT / "r3rl").parts]
    offenders = [str(p) for p in core if p.name != "cli.py" and "r3rl.demo" in p.read_text()]
    assert offenders == []


def test_variant_fields_are_enums_listed_once_and_dump_as_strings(tmp_path):
    """A variant field holds its Choice member (from YAML, the command line or a hand-built config); the
    error lists the Enum's values; dumps and f-strings give the plain string."""
    import dataclasses
    import json
    import typing

    import yaml

    from r3rl.config import Choice, CpuMatmul, Objective, Switch, dump_config, to_dict, validate

    (tmp_path / "c.yaml").write_text("train:\n  objective: retry\ngeneration:\n  shared_prefix_attention: on\n")
    cfg = load_config(tmp_path / "c.yaml", ["generation.cpu_matmul=float32"])
    assert cfg.train.objective is Objective.RETRY and cfg.generation.shared_prefix_attention is Switch.ON
    assert cfg.generation.cpu_matmul is CpuMatmul.FLOAT32 and cfg.train.objective == "retry"
    assert f"{cfg.train.objective}" == str(cfg.train.objective) == "retry" and json.dumps(cfg.train.objective) == '"retry"'
    assert yaml.safe_load(dump_config(cfg))["train"]["objective"] == "retry"
    assert type(to_dict(cfg)["generation"]["cpu_matmul"]) is str
    with pytest.raises(ConfigError, match="generation.cpu_matmul: 'fast' is not one of auto, native, float32"):
        load_config(None, ["generation.cpu_matmul=fast"])
    hand = Config()
    hand.train.objective = "first_attempt"
    assert validate(hand).train.objective is Objective.FIRST_ATTEMPT
    hand.generation.vllm.dtype = "float8"
    with pytest.raises(ConfigError, match="generation.vllm.dtype: 'float8' is not one of auto, float32, bfloat16"):
        validate(hand)
    # every field whose default is a Choice member is typed by that Choice, so it is parsed and validated
    for section in dataclasses.fields(Config):
        if not dataclasses.is_dataclass(section.default_factory if callable(section.default_factory) else None):
            continue
        obj = section.default_factory()
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            if isinstance(getattr(obj, f.name), Choice):
                assert hints[f.name] is type(getattr(obj, f.name)), f.name


@pytest.mark.parametrize("objective", ["reflection", "first_attempt", "retry"])
def test_a_group_of_one_is_refused_where_advantages_are_normalised_in_the_group(objective):
    """A group of 1 always has advantage 0 (no learning signal); TRL rejects num_generations < 2 alike."""
    with pytest.raises(ConfigError, match=rf"rollout.group_size.*at least 2.*train.objective={objective}"):
        validate_training(load_config(None, ["rollout.group_size=1", f"train.objective={objective}"]))
    validate_training(load_config(None, ["rollout.group_size=2", f"train.objective={objective}"]))
    # eval and mining never read the group size: a config shared with them still loads
    assert load_config(None, ["rollout.group_size=1", f"train.objective={objective}"]).rollout.group_size == 1


def test_a_group_of_one_is_fine_without_group_normalisation():
    cfg = validate_training(load_config(None, ["rollout.group_size=1", "train.objective=distill_retry"]))
    assert cfg.rollout.group_size == 1
