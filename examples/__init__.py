"""Runnable, tested examples of extending r3rl (importable so tasks load by import path)."""
