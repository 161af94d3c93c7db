"""Turning a run folder into something a person reads: report.md / report.html with plots.

report.py     the entry points: build_report(run_dir), summary_table(run_dir)
run.py        reading the run folder (config.yaml, metrics.jsonl, eval_before/, eval_after/)
compare.py    paired tests of the evals' trials (before vs after, acc@2 vs the control)
wording.py    numbers and verdicts in words
document.py   the report's content as format-free blocks
render.py     blocks -> Markdown / HTML through templates/*.j2
plots.py      matplotlib figures
model_card.py the model card (README.md) of final/ and the optional push to the Hub
"""
