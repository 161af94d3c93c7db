"""Turning a run folder into something a person reads: report.md / report.html with plots.

report.py     the entry points: build_report(run_dir), summary_table(run_dir)
run.py        reading the run folder (config.yaml, metrics.jsonl, eval_before/, eval_after/)
compare.py    paired tests of the evals' trials (before vs after, acc@2 vs the control)
wording.py    numbers and verdicts in words
blocks.py     the format-free blocks a report is made of
document.py   the report's content as a list of blocks
render.py     blocks -> Markdown / HTML through templates/*.j2
plots.py      matplotlib figures
class_results.py       an evaluation's failure classes, transitions and reflection diagnostics
classes_section.py     the "Failure classes" section and its model-card summary
diagnostics_section.py the "Reflection diagnostics" section (evals and per training step)
side_by_side.py        `r3rl compare`: runs on the same trials, with per-class gains
model_card.py          the model card (README.md) of final/ and the optional push to the Hub
console_tables.py      the terminal tables of one evaluation (`r3rl eval`, the demo)
"""
