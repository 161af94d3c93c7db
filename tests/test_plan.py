"""`r3rl plan` on the paper's Countdown preset with Qwen2.5-1.5B's real config.json (public numbers:
hidden 1536, 28 layers, 12 heads, 2 kv heads, intermediate 8960, vocab 151936, tied embeddings),
checked against numbers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from r3rl.config import load_config
from r3rl.training.plan import GIB, ModelShape, format_plan, generated_tokens, load_model_shape, memory_per_device

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "qwen2.5-1.5b-config"
PRESET = ROOT / "configs" / "qwen2.5-1.5b-countdown.yaml"


@pytest.fixture()
def cfg():
    return load_config(PRESET)


def test_parameter_count_of_qwen2_5_1_5b(cfg):
    shape, _ = load_model_shape(cfg, str(FIXTURE))
    # per layer: q 1536^2 + bias 1536, k and v 1536 x 256 + bias 256 each, o 1536^2, MLP 3 x 1536 x 8960,
    # two norms 2 x 1536 = 46,797,824; x 28 + tied embedding 151936 x 1536 + final norm 1536
    assert shape.layer_params() == 46_797_824
    assert shape.params() == 1_543_714_304  # the published "1.54B"
    # peft all-linear LoRA r=16: 16 x (3072 + 2 x 1792 + 3072 + 2 x 10496 + 10496) x 28
    assert shape.lora_params(16) == 18_464_768


def test_memory_per_device(cfg):
    shape, _ = load_model_shape(cfg, str(FIXTURE))
    mem = memory_per_device(cfg, shape, processes=8, prompt_tokens=150)
    p = 1_543_714_304
    assert mem["weights = float32 master copy (trained)"] == 4 * p
    assert mem["reference model (frozen float32 copy, beta > 0)"] == 4 * p  # beta 0.001 in the preset
    assert mem["gradients (float32)"] == 4 * p
    assert mem["optimizer (AdamW, 2 x float32)"] == 8 * p
    # KV cache: 2 (k, v) x 28 layers x 256 (2 kv heads x 128) x 2 bytes = 28,672 bytes per token.
    # Shared-prefix attention (auto: G = 8, 702-token contexts): 128 / 8 + 1 = 17 failure contexts of
    # 150 + 512 + 40 = 702 tokens, and per row (128) 512 + 40 + 512 = 1064 tokens.
    assert mem["KV cache at generation.max_batch_size"] == 28_672 * (17 * 702 + 128 * 1064)
    # Without it: 128 rows x (150 + 512 + 512 + 512 + 2 x 40) = 1766 tokens each.
    cfg.generation.shared_prefix_attention = "off"
    off = memory_per_device(cfg, shape, processes=8, prompt_tokens=150)
    assert off["KV cache at generation.max_batch_size"] == 28_672 * 128 * 1766
    # checkpointing keeps one bf16 hidden state per layer instead of every block's tensors
    assert mem["activations with gradient checkpointing"] < mem["activations without gradient checkpointing"] / 10
    # 16 failures x G 8 = 128 reflections of 150 + 512 + 40 + 512 = 1214 tokens; layer inputs alone: 28 x 1536 x 2 bytes
    assert mem["activations with gradient checkpointing"] > 128 * 1214 * 28 * 1536 * 2


def test_generated_tokens(cfg):
    tokens = generated_tokens(cfg)
    assert tokens["mining"] == 20_000 * 64 * 512
    assert tokens["training"] == 1750 * 256 * 8 * (512 + 512)
    assert tokens["evaluation (r3rl eval, once)"] == 2000 * (512 + 512 + 512 + 512)  # + no-reflection control
    assert tokens["periodic evaluation"] == 18 * 500 * 2048  # every 100 of 1750 steps and at the end


def test_cli_prints_the_plan_with_and_without_a_measured_speed(capsys):
    from r3rl.cli import main

    args = ["plan", "--config", str(PRESET), "--model-config", str(FIXTURE), "--processes", "8", "--device-memory", "80GB"]
    assert main(args + ["--tokens-per-s", "2000", "--prompt-tokens", "150"]) == 0
    out = capsys.readouterr().out
    assert "1.54B" in out and "fits in 80 GB" in out and "ASSUMED" not in out and "assumptions:" not in out
    # training: 3,670,016,000 tokens / (2000 x 8 tokens/s) = 63.7 h
    assert "63.7 h" in out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(ASSUMED)" in out and "not a measurement" in out and "--tokens-per-s" in out


def test_too_small_a_device_is_reported(cfg):
    shape = ModelShape.from_config({"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
                                    "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
                                    "tie_word_embeddings": True, "model_type": "qwen2"})
    assert "does NOT fit in 24 GB" in format_plan(cfg, shape, "inline", gpu_memory_gb=24, tokens_per_s=1000, prompt_tokens=150)
    assert GIB == 2 ** 30


def test_missing_model_config_is_one_sentence(cfg, tmp_path):
    cfg.model.name_or_path = "nobody/no-such-model"
    with pytest.raises(ValueError, match="pass --model-config"):
        load_model_shape(cfg)


def _readme_plan_commands() -> list[tuple[str, list[str], bool]]:
    """(command line, printed output lines, abridged) for each `$ r3rl plan ...` the README shows."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out: list[tuple[str, list[str], bool]] = []
    for block in text.split("```")[1::2]:
        current = None
        for line in block.splitlines():
            if line.startswith("$ r3rl plan "):
                command, _, note = line[2:].partition("   (")
                current = (command.strip(), [], "abridged" in note)
                out.append(current)
            elif line.startswith("$ "):
                current = None
            elif current is not None:
                current[1].append(line)
    return out


def test_the_readme_plan_commands_print_the_readme_output(capsys, monkeypatch, tmp_path):
    """Typed as printed, in the repository root, on a machine that has never seen the hub."""
    import shlex

    from r3rl.cli import main

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # no local Hugging Face cache either
    commands = _readme_plan_commands()
    assert len(commands) >= 2
    for command, want, abridged in commands:
        argv = shlex.split(command)
        assert argv[0] == "r3rl"
        capsys.readouterr()
        rc = main(argv[1:])
        captured = capsys.readouterr()
        assert rc == 0, f"{command}: {captured.err}"
        got = captured.out.rstrip("\n").splitlines()
        while want and not want[-1].strip():
            want.pop()
        if abridged:  # the README shows some of the lines, in order
            it = iter(got)
            missing = [line for line in want if line not in it]
            assert not missing, f"{command}: lines not printed (in this order): {missing}"
        else:
            assert got == want, command


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_plans_offline(preset, capsys, monkeypatch, tmp_path):
    from r3rl.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    assert main(["plan", "--config", str(preset)]) == 0, capsys.readouterr().err
    assert str(ROOT / "configs" / "models") in capsys.readouterr().out.splitlines()[0]


def test_the_bundled_configs_have_the_published_parameter_counts():
    sizes = {"Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304, "Qwen/Qwen2-1.5B-Instruct": 1_543_714_304,
             "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512}  # "1.54B" and "7.61B" on the model cards
    for name, params in sizes.items():
        shape, _ = load_model_shape(load_config(PRESET), str(ROOT / "configs" / "models" / name))
        assert shape.params() == params, name


DEMO = ROOT / "r3rl" / "demo"


def test_a_small_model_prints_in_millions_and_short_times_in_minutes(capsys):
    """The demo's tiny model: parameters in M, not "0.00B"; wall times under an hour in min / s, not "0.0 h"."""
    from r3rl.cli import main

    args = ["plan", "--config", str(DEMO / "demo.yaml"), "--model-config", str(DEMO / "model"), "--device-memory", "2GB"]
    assert main(args) == 0
    out = capsys.readouterr().out
    shape = ModelShape.from_config(__import__("json").loads((DEMO / "model" / "config.json").read_text()))
    assert shape.params() < 1e8
    assert f"parameters: {shape.params() / 1e6:.1f}M ({shape.params():,})" in out
    assert "0.00B" not in out and " 0.0 h" not in out and "0.000B" not in out
    assert "fits in 2 GB" in out


def test_count_and_duration_formatting():
    from r3rl.training.plan import _count, _duration

    assert _count(1_543_714_304) == "1.54B"
    assert _count(494_032_768) == "494.0M"
    assert _count(912_345) == "0.9M"
    assert _count(4_321) == "4.3K" and _count(12) == "12"
    assert _duration(3.67e9, 8000).strip() == "127.4 h"
    assert _duration(36 * 60 * 1000, 1000).strip() == "36.0 min"
    assert _duration(12_500, 1000).strip() == "12.5 s"


@pytest.mark.parametrize("text, gb", [("80GB", 80.0), ("80 GB", 80.0), ("24gb", 24.0), ("16GiB", 16 * 2 ** 30 / 1e9),
                                      ("512MB", 0.512), ("1.5TB", 1500.0), ("40", 40.0)])
def test_device_memory_parses_units(text, gb):
    from r3rl.training.plan import parse_memory

    assert parse_memory(text) == pytest.approx(gb)


def test_a_bad_device_memory_is_one_sentence():
    from r3rl.training.plan import parse_memory

    with pytest.raises(ValueError, match="--device-memory"):
        parse_memory("lots")


def test_without_a_size_the_plan_sizes_this_machine(monkeypatch, capsys):
    """No --device-memory / --gpu-memory-gb: this machine's device (CPU RAM here, there is no GPU in CI)."""
    import torch

    from r3rl.cli import main
    from r3rl.training.plan import this_device_memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gb, where = this_device_memory()
    import psutil

    assert gb == pytest.approx(psutil.virtual_memory().total / 1e9)
    assert "CPU" in where
    assert main(["plan", "--config", str(DEMO / "demo.yaml"), "--model-config", str(DEMO / "model")]) == 0
    out = capsys.readouterr().out
    assert f"{gb:.1f} GB per device ({where}; size another with --device-memory 80GB)" in out


def test_a_cuda_device_is_sized_from_its_memory(monkeypatch):
    import torch

    from r3rl.training.plan import this_device_memory

    class Props:
        total_memory = 80 * 10 ** 9
        name = "NVIDIA H100 80GB HBM3"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    gb, where = this_device_memory()
    assert gb == 80.0 and "H100" in where


def test_the_old_gpu_memory_flag_still_works(capsys):
    from r3rl.cli import main

    assert main(["plan", "--config", str(PRESET), "--model-config", str(FIXTURE), "--gpu-memory-gb", "24"]) == 0
    assert "does NOT fit in 24 GB" in capsys.readouterr().out


def test_small_memory_reads_in_mib():
    from r3rl.training.plan import _bytes

    assert _bytes(5.75 * GIB) == "5.75 GiB" and _bytes(3.5 * 2 ** 20) == "3.5 MiB"


def test_fsdp2_preset_for_7b_full_fine_tuning_fits_8_devices_of_80_gb(capsys):
    """Qwen2.5-7B full fine-tuning: 112 GB of float32 weights, gradients and AdamW state do not fit one 80 GB
    device under DDP; sharded over 8 with FSDP2 (the preset, generation in vLLM) the plan says it fits."""
    from r3rl.cli import main
    from r3rl.training.plan import sharded_memory

    preset = ROOT / "configs" / "qwen2.5-7b-countdown-fsdp2.yaml"
    cfg = load_config(preset)
    shape, _ = load_model_shape(cfg, preset=preset)
    p = shape.params()
    assert p == 7_615_616_512  # the published 7.62B (untied lm_head)
    parts = sharded_memory(cfg, shape, 8, 80.0)
    fsdp = parts["fsdp2"]
    assert fsdp["sharded weights + gradients + AdamW (4 + 4 + 8 bytes per parameter / N)"] == 16 * p / 8
    root = p - 28 * shape.layer_params()  # embeddings 152064 x 3584, lm_head the same, final norm 3584
    assert root == 2 * 152064 * 3584 + 3584
    assert fsdp["gathered: root + 2 layers (float32) and their gradients before reduce-scatter"] == 4 * (
        2 * root + 3 * shape.layer_params())
    assert parts["zero3"]["sharded bf16 weights + float32 master, gradients, AdamW (2 + 4 + 4 + 8 bytes / N)"] == 18 * p / 8
    assert not any("reference" in k for k in fsdp)  # beta 0: no reference copy
    assert main(["plan", "--config", str(preset), "--processes", "8", "--prompt-tokens", "150", "--device-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit in 80 GB" in out  # data parallel: every device holds the 112 GB
    assert "fsdp2 fits in 80 GB" in out
    # the hf backend keeps an unsharded float32 generation copy, and a KL term an unsharded reference
    cfg.generation.backend, cfg.train.beta = "hf", 0.001
    fsdp = sharded_memory(cfg, shape, 8, 80.0)["fsdp2"]
    assert fsdp["generation copy (unsharded float32, hf backend)"] == 4 * p
    assert fsdp["reference model (unsharded float32 copy, beta > 0)"] == 4 * p
