"""Measuring a model: first-try and second-try accuracy with honest statistics.

accuracy.py    acc@1, acc@2 (retry after reflection) and the no-reflection control
records.py     TrialRecord: one trial as episodes.jsonl holds it (written here, read by reporting)
stats.py       confidence intervals and tests (pure functions, no torch)
"""
