"""Mining: the failure set a model trains on, by rejection sampling over the task's examples
(`failure_set.py`: sharded in chunks over processes, resumable, reused only by the model and
settings that mined it). See docs/design.md.
"""
