"""Learning from episodes: reflection-only GRPO.

grpo.py        pure tensor maths: group advantages, clipped policy loss, KL, importance weights, batch layout
logprobs.py    completion log-probs from a causal LM (chunked LM head): the model-calling half
policy.py      the trainable model (LoRA or full), its reference, saving the final model
failures.py    the failure source: a mined failure set, or first attempts drawn online
metrics.py     the metrics.jsonl row (MetricsRow), written here and read by reporting
tracking.py    episodes as text for experiment trackers
checkpoint.py  atomic, resumable training checkpoints
trainer.py     the recipe: setup steps, then failures -> rollouts -> loss -> optimizer step -> checkpoints, metrics
"""
