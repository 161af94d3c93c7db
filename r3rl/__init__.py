"""r3rl: Reflect, Retry, Reward.

Self-reflection reinforcement learning for language models (Bensal et al., 2025,
arXiv 2505.24726): when a verifier says a first attempt failed, the model writes a
reflection and retries; GRPO rewards the reflection tokens, and only those, by
whether the retry passed.
"""

__version__ = "0.1.0"
