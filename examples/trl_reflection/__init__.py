"""Training reflections with TRL's GRPOTrainer and r3rl's rollout: see README.md in this folder."""
