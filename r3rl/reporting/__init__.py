"""Turning a run folder into something a person reads: tables, plots, report.md / report.html."""
