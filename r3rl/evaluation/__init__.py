"""Measuring a model: first-try and second-try accuracy with honest statistics.

accuracy.py    acc@1, acc@2 (retry after reflection) and the no-reflection control
result.py      EvalResult: the typed results.json (written here, read by the trainer and reporting)
records.py     TrialRecord: one trial as episodes.jsonl holds it (written here, read by reporting)
stats.py       confidence intervals and tests (pure functions, no torch)
"""
