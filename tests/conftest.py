"""Test-wide settings: nothing may wait on the network."""

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
