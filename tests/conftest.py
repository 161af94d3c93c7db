"""Test-wide settings: nothing may wait on the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# Tiny test models gain nothing from threads, and on a shared 2-core machine OpenMP threads
# competing with other processes slow each step by an order of magnitude.
torch.set_num_threads(1)
