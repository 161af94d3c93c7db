"""The model identity a failure set records: the same weights agree under any name, other weights never do."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file, save_file

from r3rl.config import ModelConfig
from r3rl.demo.tiny import save_tiny_model
from r3rl.engine.loading import register_model_alias
from r3rl.engine.provenance import model_identity, parameter_fingerprint, same_model


def test_weights_fingerprint_tells_fine_tunes_apart(tmp_path):
    base = save_tiny_model(tmp_path / "base", hidden_size=32, layers=1, heads=2, kv_heads=1)
    tuned = tmp_path / "tuned"
    shutil.copytree(base, tuned)
    tensors = load_file(tuned / "model.safetensors")
    # a fine-tune: every tensor moves a little; same names, shapes and file size
    tensors = {k: v + 1e-3 for k, v in tensors.items()}
    save_file(tensors, tuned / "model.safetensors", metadata={"format": "pt"})
    assert (tuned / "model.safetensors").stat().st_size == (base / "model.safetensors").stat().st_size
    a, b = model_identity(ModelConfig(name_or_path=str(base))), model_identity(ModelConfig(name_or_path=str(tuned)))
    assert a["weights"].startswith("files:") and not same_model(a, b)
    register_model_alias("provenance-test-alias", base)
    alias = model_identity(ModelConfig(name_or_path="provenance-test-alias"))
    assert alias["name_or_path"] == "provenance-test-alias" and same_model(alias, a)


def test_a_model_in_memory_is_fingerprinted_from_its_parameters():
    torch.manual_seed(0)
    one, two = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    assert parameter_fingerprint(one) == parameter_fingerprint(one) != parameter_fingerprint(two)
