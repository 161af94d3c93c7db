"""Bridges to training libraries people already use. Each module imports its library lazily.

trl.py    train r3rl reflections with TRL's GRPOTrainer: a rollout function, a retry-verdict
          reward and a failure set -> prompt dataset helper
"""
