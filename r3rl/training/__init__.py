"""Learning from episodes: reflection-only GRPO.

grpo.py        pure tensor maths: group advantages, clipped policy loss, KL, batch layout
logprobs.py    completion log-probs from a causal LM (chunked LM head): the model-calling half
policy.py      the trainable model (LoRA or full), its reference, saving the final model
checkpoint.py  atomic, resumable training checkpoints
trainer.py     the loop: failures -> rollouts -> loss -> optimizer step -> checkpoints, metrics
"""
