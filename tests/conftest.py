"""Test-wide settings (nothing may wait on the network) and the fixtures many test modules share."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny test models gain nothing from threads, and on a shared 2-core machine OpenMP threads
# competing with other processes slow each step by an order of magnitude.
torch.set_num_threads(1)

# CI runs the property tests on a fixed seed, so a red run is reproducible and never a coin toss;
# locally they keep exploring new cases.
if os.environ.get("CI"):
    from hypothesis import settings  # noqa: E402

    settings.register_profile("ci", derandomize=True)
    settings.load_profile("ci")


import pytest  # noqa: E402

from r3rl.demo import tiny  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Qwen2 model folder (config, weights, tokenizer), one per test module: the model
    every test that loads a model from disk uses. Module scope, so a test module may write into it."""
    return tiny.save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, layers=1, heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def tok():
    """The tiny tests' tokenizer (r3rl.demo.tiny.build_tokenizer), one per test module.
    tests/test_demo_model.py defines its own `tok`: the demo's larger vocabulary."""
    return tiny.build_tokenizer()
