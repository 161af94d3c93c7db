"""The report's content as a list of blocks (headings, paragraphs, tables, images), format-free.

The content is built once here and rendered twice (render.py: Markdown and HTML), so the
two files cannot disagree. Each section says plainly what was not measured instead of
drawing it: a KL curve of zeros when beta = 0 (KL is never computed then), a second panel
identical to the first, a loss printed as 0.0000 when it is 1e-8.
"""

from __future__ import annotations

from typing import Any

import yaml

from r3rl.reporting import plots
from r3rl.reporting.blocks import Block, Code, Heading, Image, Para, TableBlock
from r3rl.reporting.classes_section import failure_class_blocks, run_classes
from r3rl.reporting.diagnostics_section import diagnostics_blocks
from r3rl.reporting.compare import before_after, reflection_vs_control
from r3rl.reporting.run import ACC_KEYS, EvalResults, RunData, is_number, lookup, metric_series, non_finite_steps
from r3rl.reporting.wording import (
    fmt_ci, fmt_change, fmt_discordant, fmt_num, fmt_p, fmt_pct, fmt_pts, fmt_pts_ci, fmt_sci, significance_sentence, truncate,
)
from r3rl.training.metrics import MetricsRow, column

# metrics.jsonl columns, named through the trainer's schema (MetricsRow): a column the trainer
# no longer writes fails here, at import, instead of silently leaving a plot out.
# Plotted metric -> (plot title, y label, what it means for the table).
TRAIN_PLOTS: dict[str, tuple[str, str, str]] = {
    column("reward_mean"): ("Mean reflection reward", "reward", "mean reward of sampled reflections (retry passed)"),
    column("retry_success"): ("Retry success rate", "fraction of retries passed", "share of retries that passed"),
    column("reflection_len"): ("Reflection length", "tokens", "mean reflection length in tokens"),
    column("zero_adv_frac"): ("Zero-advantage groups", "fraction of groups", "share of groups with equal rewards (no gradient)"),
    column("kl"): ("KL to the reference model", "KL (k3 estimate)", "KL estimate to the reference model"),
}
# Shares between 0 and 1, plotted on the whole 0-1 axis (plots.metric_curve).
RATE_PLOTS = frozenset({column("reward_mean"), column("retry_success"), column("zero_adv_frac")})
# Tabulated but not plotted: useful for debugging, not for judging the method.
TRAIN_TABLE_ONLY: dict[str, str] = {
    column("loss"): "policy loss",
    column("lr"): "learning rate",
    column("tokens_per_s"): "generated tokens per second",
}
EVAL_METRIC_KEYS: tuple[str, ...] = (column("eval/acc@1"), column("eval/acc@2"))
CONFIG_SUMMARY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("model.name_or_path",)),
    ("task", ("task.name",)),
    ("steps", ("train.steps",)),
    ("failures per step", ("train.batch_size",)),
    ("group size (reflections per failure)", ("rollout.group_size", "train.group_size")),
    ("retries per reflection", ("rollout.retries_per_reflection",)),
    ("learning rate", ("train.learning_rate",)),
    ("KL coefficient", ("train.beta", "train.kl_coef")),
    ("advantage", ("train.advantage",)),
    ("seed", ("seed", "train.seed")),
)
MAX_EXAMPLE_ROWS = 8
# A loss whose largest magnitude is below this reads as 0 in fixed notation and gets explained.
TINY_LOSS = 1e-4
_TEXT_LIMITS = {"attempt": 320, "reflection": 480, "retry": 320, "reason": 100}




# --------------------------------------------------------------------------- run settings


def _config_blocks(run: RunData) -> list[Block]:
    rows = [[label, str(v)] for label, paths in CONFIG_SUMMARY if (v := lookup(run.config, *paths)) is not None]
    lora = lookup(run.config, "train.lora")
    if isinstance(lora, bool):
        rows.append(["fine-tuning", f"LoRA r={lookup(run.config, 'train.lora_r')}" if lora else "full"])
    blocks: list[Block] = [Heading(2, "Run")]
    blocks.append(
        TableBlock(["setting", "value"], rows) if rows
        else Para("config.yaml is missing or holds none of the usual settings.", style="note")
    )
    if run.config:
        blocks.append(Code("Full resolved config", yaml.safe_dump(run.config, sort_keys=False)))
    return blocks


# --------------------------------------------------------------------------- eval results


def _acc_cell(ev: EvalResults | None, key: str):
    return ev.acc.get(key) if ev is not None else None


def _results_blocks(run: RunData) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Results")]
    if run.before is None and run.after is None:
        return blocks + [Para("No eval results: run `r3rl eval` before and after training to fill this section.",
                              style="note")]
    headline = before_after("acc@2", run.before, run.after)
    blocks.append(Para(significance_sentence(headline), style="verdict"))
    rows = []
    for key, label in ACC_KEYS:
        b, a = _acc_cell(run.before, key), _acc_cell(run.after, key)
        rows.append([
            label,
            fmt_pct(b.value) if b else "—", fmt_ci(b.ci) if b else "—",
            fmt_pct(a.value) if a else "—", fmt_ci(a.ci) if a else "—",
            fmt_change(b, a),
        ])
    blocks.append(TableBlock(["metric", "before", "95% CI", "after", "95% CI", "change"], rows))
    facts = [
        f"{ev.name}: {ev.n} examples x {ev.samples} sample{'s' if ev.samples != 1 else ''} each" + (f", model {ev.model}" if ev.model else "")
        + (f", intervals: {ev.intervals}" if ev.intervals else "")
        for ev in (run.before, run.after) if ev is not None and ev.n is not None and ev.samples is not None
    ]
    if facts:
        blocks.append(Para("; ".join(facts) + "."))
    blocks += _paired_blocks(run, headline)
    bars = plots.accuracy_bars(
        [label.split(" (")[0] for _, label in ACC_KEYS],
        [(c.value, c.ci) if (c := _acc_cell(run.before, k)) else None for k, _ in ACC_KEYS],
        [(c.value, c.ci) if (c := _acc_cell(run.after, k)) else None for k, _ in ACC_KEYS],
    )
    blocks.append(Image("accuracy_before_after", "Eval accuracy before and after training, with 95% intervals",
                        plots.png_bytes(bars)))
    return blocks


def _paired_blocks(run: RunData, headline) -> list[Block]:
    """The paired tests: each metric before vs after, and acc@2 vs the control within each eval."""
    comparisons = [headline if key == "acc@2" else before_after(key, run.before, run.after) for key, _ in ACC_KEYS]
    comparisons += [c for ev in (run.before, run.after) if (c := reflection_vs_control(ev)) is not None]
    done = [c for c in comparisons if c.result is not None]
    if not done:
        return []
    rows = [
        [dict(ACC_KEYS).get(c.label, c.label).split(" (")[0], f"{c.first} → {c.second}", fmt_pct(c.result.first_rate), fmt_pct(c.result.second_rate),
         fmt_pts(c.result.difference), fmt_pts_ci(c.result.difference_ci), fmt_p(c.result.p_value),
         fmt_discordant(c.first, c.result.first_only, c.second, c.result.second_only)]
        for c in done
    ]
    blocks: list[Block] = [
        Heading(3, "Paired tests"),
        TableBlock(["comparison", "conditions", "first", "second", "difference", "95% CI", "p-value",
                    "trials passed under one condition only"], rows),
    ]
    methods = sorted({(c.result.test, c.result.interval) for c in done})
    blocks.append(Para(
        "The same examples and samples are scored under both conditions, so each comparison is a paired test: "
        + "; ".join(f"{test}, with the paired difference's interval by {interval}" for test, interval in methods)
        + ". Significance is judged at the 5% level by the test; near that boundary the interval can exclude 0 "
        "while the exact test, which is conservative, does not. Whether two accuracy intervals overlap is not a test."
    ))
    control_after = next((c for c in done if c.label == "acc@2 in eval_after"), None)
    if control_after is not None:
        blocks.append(Para(significance_sentence(control_after)))
    unmatched = max((c.unmatched for c in done), default=0)
    if unmatched:
        blocks.append(Para(f"{unmatched} trial(s) appear in only one of eval_before and eval_after and are left "
                           "out of the before/after tests.", style="note"))
    return blocks


# --------------------------------------------------------------------------- training curves


def _rows(run: RunData) -> list[dict[str, Any]]:
    """metrics.jsonl rows as the trainer's schema reads them (rows of older runs included: a missing
    column is None, an unknown one is kept)."""
    return [MetricsRow.from_json(r).to_json() for r in run.metrics]


def _series(run: RunData, key: str) -> tuple[list[int], list[float]]:
    return metric_series(_rows(run), column(key))


def _kl_state(run: RunData) -> str:
    """'measured', or why the logged KL values are not measurements."""
    beta = lookup(run.config, "train.beta", "train.kl_coef")
    if is_number(beta) and beta == 0:
        return "not measured (beta = 0)"
    _, kl = _series(run, "kl")
    if beta is None and kl and all(v == 0 for v in kl):
        return "not measured (0 at every step and config.yaml gives no beta)"
    return "measured"


def _same_series(run: RunData, a: str, b: str) -> bool:
    sa, sb = _series(run, a), _series(run, b)
    return bool(sa[1]) and sa[0] == sb[0] and all(abs(x - y) <= 1e-12 for x, y in zip(sa[1], sb[1]))


def _training_blocks(run: RunData) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training")]
    if not run.metrics:
        return blocks + [Para("No training metrics: metrics.jsonl is missing or empty.", style="note")]
    steps = [r["step"] for r in run.metrics]
    blocks.append(Para(f"{len(steps)} optimizer steps logged (steps {steps[0]} to {steps[-1]})."))
    kl_state = _kl_state(run)
    one_panel = _same_series(run, "reward_mean", "retry_success")
    meanings = {k: v[2] for k, v in TRAIN_PLOTS.items()} | TRAIN_TABLE_ONLY
    if one_panel:
        del meanings["retry_success"]
        meanings["reward_mean"] += "; equal to retry_success at every step (one retry per reflection)"
    rows = []
    for key, meaning in meanings.items():
        xs, ys = _series(run, key)
        if key == "kl" and kl_state != "measured":
            if ys:
                rows.append([key, meaning, kl_state, kl_state, "—"])
            continue
        fmt = fmt_sci if key == "loss" else fmt_num
        if ys:
            rows.append([key, meaning, fmt(ys[0]), fmt(ys[-1]), f"{xs[-1]}"])
        bad = non_finite_steps(_rows(run), column(key))
        if bad:
            blocks.append(Para(f"{key} was NaN or infinite at {len(bad)} step(s), first at step {bad[0]}.",
                               style="note"))
    if rows:
        blocks.append(TableBlock(["metric", "meaning", "first", "final", "final step"], rows))
    blocks += _loss_note(run)
    if kl_state != "measured" and _series(run, "kl")[1]:
        blocks.append(Para(f"KL to the reference model: {kl_state}, so it is not plotted; the trainer logs 0 "
                           "when it does not compute it.", style="note"))
    blocks += _zero_advantage_notes(run, warning=False)
    for key, (title, ylabel, _) in TRAIN_PLOTS.items():
        if (key == "kl" and kl_state != "measured") or (key == "retry_success" and one_panel):
            continue
        xs, ys = _series(run, key)
        if ys:
            if key == "reward_mean" and one_panel:
                title = "Mean reflection reward = retry success rate"
            fig = plots.metric_curve(xs, ys, title=title, ylabel=ylabel, rate=key in RATE_PLOTS)
            blocks.append(Image(key, f"{title} ({key}) over optimizer steps", plots.png_bytes(fig)))
    words = dict(ACC_KEYS)  # the legend says "acc@1 (first try)", not the metrics.jsonl key "eval/acc@1"
    eval_series = {words.get(k.split("/")[-1], k): v for k in EVAL_METRIC_KEYS if (v := _series(run, k))[1]}
    if eval_series:
        blocks.append(Image("eval_accuracy", "Periodic eval accuracy during training",
                            plots.png_bytes(plots.eval_curves(eval_series))))
    return blocks


def _loss_note(run: RunData) -> list[Block]:
    _, loss = _series(run, "loss")
    if not loss or max(abs(v) for v in loss) >= TINY_LOSS:
        return []
    return [Para(
        f"The policy loss stays within ±{fmt_sci(max(abs(v) for v in loss))} (shown in scientific notation). "
        "That is expected for GRPO and does not mean nothing was learned: advantages are normalised to mean zero "
        "inside each group and, with one update per batch, the probability ratio is exactly 1, so the loss value "
        "is a sum of advantages that cancel, while its gradient (each advantage times the gradient of its "
        "reflection's log-probability) does not; grad_norm in metrics.jsonl shows the size of each update."
    )]


def _zero_advantage_notes(run: RunData, *, warning: bool) -> list[Block]:
    """warning=True: the top-of-report warning for a run with no learning signal at any step;
    warning=False: the training section's note on steps without signal in an otherwise live run."""
    xs, ys = _series(run, "zero_adv_frac")
    dead = [x for x, y in zip(xs, ys) if y >= 1.0 - 1e-12]
    if not dead:
        return []
    if len(dead) == len(xs):
        if not warning:
            return []
        return [Para(
            f"Warning: no learning signal in this run. At every one of its {len(xs)} steps every group had zero "
            "advantage (zero_adv_frac = 1): all reflections of each failure got the same reward, so GRPO had "
            "nothing to learn from and the weights did not move towards better reflections. Typical causes: "
            "retries that fail (or pass) whatever the reflection says, too small a rollout.group_size, or a "
            "reflection temperature too low for the group's reflections to differ.",
            style="warning",
        )]
    if warning:
        return []
    return [Para(f"At {len(dead)} of {len(xs)} steps every group had zero advantage (no learning signal at "
                 f"those steps), first at step {dead[0]}.", style="note")]


# --------------------------------------------------------------------------- examples


def _verdict(ok: Any) -> str:
    return "pass" if ok is True else "fail" if ok is False else "?"


def _example_blocks(run: RunData) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Examples: failed first attempts after training")]
    if run.after is None or not run.after.episodes:
        return blocks + [Para("No eval_after/episodes.jsonl, so there are no examples to show.", style="note")]
    failed = [e for e in run.after.episodes if e.get("attempt_ok") is False]
    if not failed:
        return blocks + [Para("Every first attempt passed in eval_after: there is no reflection to show.")]
    before_by_key = {
        (e.get("example_id"), e.get("sample")): e for e in (run.before.episodes if run.before else [])
    }
    # Eval order, not sorted by outcome: picking the retries that passed would flatter the run.
    # Rows with a before-training counterpart come first so the two reflections can be compared.
    paired = [e for e in failed if (e.get("example_id"), e.get("sample")) in before_by_key]
    unpaired = [e for e in failed if (e.get("example_id"), e.get("sample")) not in before_by_key]
    shown = (paired + unpaired)[:MAX_EXAMPLE_ROWS]
    retry_passed = sum(1 for e in failed if e.get("retry_ok") is True)
    blocks.append(Para(
        f"{len(failed)} of {len(run.after.episodes)} first attempts failed after training and "
        f"{retry_passed} of those retries passed. Showing {len(shown)}, in eval order, "
        "matched by (example_id, sample) with the eval before training."
    ))
    rows = []
    for e in shown:
        b = before_by_key.get((e.get("example_id"), e.get("sample")))
        if b is None:
            before_reflection, before_verdict = "(not in eval_before)", "before: —"
        elif b.get("attempt_ok") is True:
            before_reflection, before_verdict = "(first attempt passed, no reflection)", "before: attempt pass"
        else:
            before_reflection = truncate(str(b.get("reflection_text", "")), _TEXT_LIMITS["reflection"])
            before_verdict = f"before: attempt fail, retry {_verdict(b.get('retry_ok'))}"
        after_verdict = f"after: attempt fail, retry {_verdict(e.get('retry_ok'))}"
        reason = str(e.get("retry_reason") or "")
        if reason and e.get("retry_ok") is not True:  # why it failed; a pass needs no reason
            after_verdict += f" ({truncate(reason, _TEXT_LIMITS['reason'])})"
        rows.append([
            f"{e.get('example_id')} #{e.get('sample')}",
            truncate(str(e.get("attempt_text", "")), _TEXT_LIMITS["attempt"]),
            before_reflection,
            truncate(str(e.get("reflection_text", "")), _TEXT_LIMITS["reflection"]),
            truncate(str(e.get("retry_text", "")), _TEXT_LIMITS["retry"]),
            f"{before_verdict}\n{after_verdict}",
        ])
    blocks.append(TableBlock(
        ["example", "failed attempt (after)", "reflection before training", "reflection after training",
         "retry after training", "verdicts"],
        rows, long_text=True,
    ))
    return blocks


def report_blocks(run: RunData) -> list[Block]:
    """The report's content, in order, independent of the output format."""
    blocks: list[Block] = [Heading(1, f"r3rl run report: {run.run_dir.resolve().name}")]
    blocks += _zero_advantage_notes(run, warning=True)
    blocks += [Para(n, style="note") for n in run.notes]
    blocks += [Para(w, style="warning") for w in run.stale.values()]  # numbers of other weights than named
    if run.weights:  # which weights the report's numbers describe (r3rl/engine/provenance.py fingerprints)
        blocks.append(Para("Weights fingerprints: " + "; ".join(f"{k} {v}" for k, v in run.weights.items()) + ".",
                           style="note"))
    blocks += _config_blocks(run)
    blocks += _results_blocks(run)
    # Imported here: these sections build on the block types defined above.

    evals = run_classes(run)
    blocks += failure_class_blocks(run, evals)
    blocks += _training_blocks(run)
    blocks += diagnostics_blocks(run, evals)
    blocks += _example_blocks(run)
    return blocks
