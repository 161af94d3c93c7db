"""Turn a run folder into report.md, a self-contained report.html and PNG plots.

`build_report(run_dir)` is what `r3rl report RUN_DIR` calls. It reads the run
folder contract (config.yaml, metrics.jsonl, eval_before/, eval_after/), says in
plain words whether second-try accuracy changed beyond its 95% intervals, plots
the RL metrics worth watching (reward, retry success, reflection length, the
share of zero-advantage groups, KL), and shows failed examples with the
reflection written before and after training side by side.

The content is built once as a list of blocks and rendered twice (Markdown and
HTML), so the two files cannot disagree. Missing pieces (no evals, no metrics)
become a note in the report; a malformed file is an error naming file and line,
because a report quietly built from half a file would misstate the run.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from r3rl.reporting import plots
from r3rl.io import atomic_write_bytes, iter_jsonl

ACC_KEYS: tuple[tuple[str, str], ...] = (
    ("acc@1", "acc@1 (first try)"),
    ("acc@2", "acc@2 (retry after reflection)"),
    ("acc@2_no_reflection", "acc@2 without reflection (control)"),
)
# Plotted metric -> (plot title, y label, what it means for the table).
TRAIN_PLOTS: dict[str, tuple[str, str, str]] = {
    "reward_mean": ("Mean reflection reward", "reward", "mean reward of sampled reflections (retry passed)"),
    "retry_success": ("Retry success rate", "fraction of retries passed", "share of retries that passed"),
    "reflection_len": ("Reflection length", "tokens", "mean reflection length in tokens"),
    "zero_adv_frac": ("Zero-advantage groups", "fraction of groups", "share of groups with equal rewards (no gradient)"),
    "kl": ("KL to the reference model", "KL (k3 estimate)", "KL estimate to the reference model"),
}
# Tabulated but not plotted: useful for debugging, not for judging the method.
TRAIN_TABLE_ONLY: dict[str, str] = {
    "loss": "policy loss",
    "lr": "learning rate",
    "tokens_per_s": "generated tokens per second",
}
EVAL_METRIC_KEYS: tuple[str, ...] = ("eval/acc@1", "eval/acc@2")
# (label, dotted paths tried in order): configs have moved keys between sections.
CONFIG_SUMMARY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("model.name_or_path",)),
    ("task", ("task.name",)),
    ("steps", ("train.steps",)),
    ("failures per step", ("train.batch_size",)),
    ("group size (reflections per failure)", ("rollout.group_size", "train.group_size")),
    ("learning rate", ("train.learning_rate",)),
    ("KL coefficient", ("train.beta", "train.kl_coef")),
    ("advantage", ("train.advantage",)),
    ("seed", ("seed", "train.seed")),
)
MAX_EXAMPLE_ROWS = 8
_TEXT_LIMITS = {"attempt": 320, "reflection": 480, "retry": 320, "reason": 100}


class ReportError(ValueError):
    """A run-folder file that cannot be read; the message names the file (and line)."""


# --------------------------------------------------------------------------- reading


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects (blank lines skipped) with r3rl.io's parser.

    Its errors name the file and the line; they are re-raised as ReportError so a
    caller can tell a broken run folder from a bug in the report code.
    """
    try:
        return list(iter_jsonl(path))
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except ValueError as e:
        raise ReportError(str(e)) from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ReportError(f"{path}: malformed YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Accuracy:
    """An accuracy (fraction) with its 95% interval, None when the eval did not record one."""

    value: float
    ci: tuple[float, float] | None


@dataclass(frozen=True)
class EvalResults:
    """One eval folder: results.json read into Accuracy values, plus its per-sample episodes."""

    name: str
    task: str | None
    model: str | None
    n: int | None
    samples: int | None
    acc: dict[str, Accuracy | None]
    episodes: list[dict[str, Any]]


def load_eval(eval_dir: Path) -> EvalResults | None:
    """Read eval_before/ or eval_after/; None when the folder or its results.json is absent."""
    results_path = eval_dir / "results.json"
    if not results_path.is_file():
        return None
    data = _read_json(results_path)
    acc: dict[str, Accuracy | None] = {}
    for key, _ in ACC_KEYS:
        value, ci = data.get(key), data.get(f"{key}_ci")
        if value is None:
            acc[key] = None
            continue
        if not _is_number(value):
            raise ReportError(f"{results_path}: {key!r} must be a number, got {value!r}")
        if ci is not None and not (
            isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_number(c) for c in ci)
        ):
            raise ReportError(f"{results_path}: {key}_ci must be [lo, hi], got {ci!r}")
        acc[key] = Accuracy(float(value), (float(ci[0]), float(ci[1])) if ci is not None else None)
    episodes_path = eval_dir / "episodes.jsonl"
    episodes = read_jsonl(episodes_path) if episodes_path.is_file() else []
    n, samples = data.get("n"), data.get("samples")
    return EvalResults(
        name=eval_dir.name,
        task=data.get("task"),
        model=data.get("model"),
        n=n if isinstance(n, int) else None,
        samples=samples if isinstance(samples, int) else None,
        acc=acc,
        episodes=episodes,
    )


def load_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-step metrics sorted by step, and notes about what had to be skipped.

    Lines sharing a step are merged, later keys winning: a resumed run logs the
    steps after its last checkpoint again, and the newer values are the ones that
    belong to the saved weights.
    """
    by_step: dict[int, dict[str, Any]] = {}
    no_step = 0
    for row in read_jsonl(path):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            no_step += 1
            continue
        by_step.setdefault(step, {}).update(row)
    notes = [f"{path.name}: {no_step} line(s) without an integer 'step' were ignored."] if no_step else []
    return [by_step[s] for s in sorted(by_step)], notes


def metric_series(metrics: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) for one metric: steps that lack it or hold a non-finite value are left out."""
    steps: list[int] = []
    values: list[float] = []
    for row in metrics:
        v = row.get(key)
        if _is_number(v) and math.isfinite(v):
            steps.append(row["step"])
            values.append(float(v))
    return steps, values


def _non_finite_steps(metrics: Sequence[dict[str, Any]], key: str) -> list[int]:
    return [r["step"] for r in metrics if _is_number(r.get(key)) and not math.isfinite(r[key])]


@dataclass
class RunData:
    """Everything the report shows, read once from the run folder."""

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    before: EvalResults | None
    after: EvalResults | None
    notes: list[str] = field(default_factory=list)


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read a run folder; missing parts become notes, malformed ones raise ReportError."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: not a run folder (no such directory)")
    # Notes here are for what no section says itself: sections note their own empty state.
    notes: list[str] = []
    config_path = root / "config.yaml"
    config = _read_config(config_path) if config_path.is_file() else {}
    metrics_path = root / "metrics.jsonl"
    metrics: list[dict[str, Any]] = []
    if metrics_path.is_file():
        metrics, metric_notes = load_metrics(metrics_path)
        notes.extend(metric_notes)
    before, after = load_eval(root / "eval_before"), load_eval(root / "eval_after")
    if (before is None) != (after is None):
        name = "eval_before" if before is None else "eval_after"
        notes.append(f"{name}/results.json is missing, so before and after cannot be compared.")
    if before and after:
        for attr in ("task", "n", "samples"):
            if getattr(before, attr) != getattr(after, attr):
                notes.append(
                    f"The two evals differ in {attr} ({getattr(before, attr)!r} before, "
                    f"{getattr(after, attr)!r} after), so the comparison is not like for like."
                )
    return RunData(root, config, metrics, before, after, notes)


# --------------------------------------------------------------------------- wording


def fmt_pct(x: float) -> str:
    """A fraction as a percentage with one decimal: 0.348 -> '34.8%'."""
    return f"{100.0 * x:.1f}%"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """A 95% interval in percent: '[28.1%, 42.6%]', or '—' when none was recorded."""
    return "—" if ci is None else f"[{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]"


def fmt_change(before: Accuracy | None, after: Accuracy | None) -> str:
    """After minus before in percentage points: '+18.1 pts'."""
    if before is None or after is None:
        return "—"
    return f"{100.0 * (after.value - before.value):+.1f} pts"


def fmt_num(x: float) -> str:
    """A metric value, short: four significant digits, thousands separators for big ones."""
    return f"{x:,.0f}" if abs(x) >= 10_000 else f"{x:.4g}"


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def significance_sentence(label: str, before: Accuracy | None, after: Accuracy | None) -> str:
    """One plain sentence on whether `label` changed by more than its 95% intervals allow.

    Non-overlapping Wilson intervals are a conservative test (a real effect can have
    overlapping intervals), so the overlap case says the run does not *show* an
    effect rather than that there is none.
    """
    if before is None or after is None:
        missing = " and ".join(n for n, a in (("before", before), ("after", after)) if a is None)
        return f"{label} cannot be compared: there is no {missing}-training result."
    b, a = fmt_pct(before.value), fmt_pct(after.value)
    if before.ci is None or after.ci is None:
        return f"{label} went from {b} to {a}; no 95% interval was recorded, so significance cannot be judged."
    cis = f"({fmt_ci(before.ci)} before, {fmt_ci(after.ci)} after)"
    if b == a:
        return f"{label} stayed at {b} {cis}, so this run does not show an effect."
    direction = "rose" if after.value > before.value else "fell"
    if intervals_overlap(before.ci, after.ci):
        return (
            f"{label} {direction} from {b} to {a}, but the 95% intervals overlap {cis}, "
            "so this run does not show a significant effect."
        )
    consequence = "a significant improvement" if direction == "rose" else "a significant drop: training made it worse"
    return f"{label} {direction} from {b} to {a} and the 95% intervals do not overlap {cis}: {consequence}."


def truncate(text: str, limit: int) -> str:
    """Shorten long text keeping its head and its tail: a final answer sits at the end."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head, tail = text[: (2 * limit) // 3], text[len(text) - (limit - (2 * limit) // 3) :]
    # Cut at word boundaries when there is one nearby, so no half-words at the seams.
    if " " in head[len(head) // 2 :]:
        head = head[: head.rindex(" ")]
    if " " in tail[: len(tail) // 2]:
        tail = tail[tail.index(" ") + 1 :]
    return f"{head.rstrip()} […{len(text) - len(head) - len(tail)} chars…] {tail.lstrip()}"


# --------------------------------------------------------------------------- document blocks


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    note: bool = False  # a caveat about missing data, styled apart from results
    strong: bool = False  # the headline verdict


@dataclass(frozen=True)
class TableBlock:
    header: list[str]
    rows: list[list[str]]
    long_text: bool = False  # cells hold multi-line model output


@dataclass(frozen=True)
class Image:
    name: str  # file stem under report/
    caption: str
    png: bytes


@dataclass(frozen=True)
class Code:
    summary: str
    text: str


Block = Heading | Para | TableBlock | Image | Code


def _config_blocks(run: RunData) -> list[Block]:
    rows = []
    for label, paths in CONFIG_SUMMARY:
        value = next((v for p in paths if (v := _lookup(run.config, p)) is not None), None)
        if value is not None:
            rows.append([label, str(value)])
    lora = _lookup(run.config, "train.lora")
    if isinstance(lora, bool):
        rows.append(["fine-tuning", f"LoRA r={_lookup(run.config, 'train.lora_r')}" if lora else "full"])
    blocks: list[Block] = [Heading(2, "Run")]
    blocks.append(
        TableBlock(["setting", "value"], rows) if rows
        else Para("config.yaml is missing or holds none of the usual settings.", note=True)
    )
    if run.config:
        blocks.append(Code("Full resolved config", yaml.safe_dump(run.config, sort_keys=False)))
    return blocks


def _acc_cell(ev: EvalResults | None, key: str) -> Accuracy | None:
    return ev.acc.get(key) if ev is not None else None


def _results_blocks(run: RunData) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Results")]
    if run.before is None and run.after is None:
        return blocks + [Para("No eval results: run `r3rl eval` before and after training to fill this section.", note=True)]
    blocks.append(
        Para(significance_sentence("acc@2", _acc_cell(run.before, "acc@2"), _acc_cell(run.after, "acc@2")), strong=True)
    )
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
    sizes = [
        f"{ev.name}: {ev.n} examples x {ev.samples} samples" + (f", model {ev.model}" if ev.model else "")
        for ev in (run.before, run.after) if ev is not None and ev.n is not None and ev.samples is not None
    ]
    if sizes:
        blocks.append(Para("; ".join(sizes) + "."))
    bars = plots.accuracy_bars(
        [label.split(" (")[0] for _, label in ACC_KEYS],
        [(c.value, c.ci) if (c := _acc_cell(run.before, k)) else None for k, _ in ACC_KEYS],
        [(c.value, c.ci) if (c := _acc_cell(run.after, k)) else None for k, _ in ACC_KEYS],
    )
    blocks.append(Image("accuracy_before_after", "Eval accuracy before and after training, with 95% intervals", plots.png_bytes(bars)))
    return blocks


def _training_blocks(run: RunData) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training")]
    if not run.metrics:
        return blocks + [Para("No training metrics: metrics.jsonl is missing or empty.", note=True)]
    steps = [r["step"] for r in run.metrics]
    blocks.append(Para(f"{len(steps)} optimizer steps logged (steps {steps[0]} to {steps[-1]})."))
    rows = []
    described = {k: v[2] for k, v in TRAIN_PLOTS.items()} | TRAIN_TABLE_ONLY
    for key, meaning in described.items():
        xs, ys = metric_series(run.metrics, key)
        if ys:
            rows.append([key, meaning, fmt_num(ys[0]), fmt_num(ys[-1]), f"{xs[-1]}"])
        bad = _non_finite_steps(run.metrics, key)
        if bad:
            blocks.append(Para(f"{key} was NaN or infinite at {len(bad)} step(s), first at step {bad[0]}.", note=True))
    if rows:
        blocks.append(TableBlock(["metric", "meaning", "first", "final", "final step"], rows))
    for key, (title, ylabel, _) in TRAIN_PLOTS.items():
        xs, ys = metric_series(run.metrics, key)
        if ys:
            fig = plots.metric_curve(xs, ys, title=title, ylabel=ylabel)
            blocks.append(Image(key, f"{title} ({key}) over optimizer steps", plots.png_bytes(fig)))
    eval_series = {k: metric_series(run.metrics, k) for k in EVAL_METRIC_KEYS}
    eval_series = {k: v for k, v in eval_series.items() if v[1]}
    if eval_series:
        blocks.append(Image("eval_accuracy", "Periodic eval accuracy during training", plots.png_bytes(plots.eval_curves(eval_series))))
    return blocks


def _verdict(ok: Any) -> str:
    return "pass" if ok is True else "fail" if ok is False else "?"


def _example_blocks(run: RunData) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Examples: failed first attempts after training")]
    if run.after is None or not run.after.episodes:
        return blocks + [Para("No eval_after/episodes.jsonl, so there are no examples to show.", note=True)]
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
    blocks += [Para(n, note=True) for n in run.notes]
    blocks += _config_blocks(run)
    blocks += _results_blocks(run)
    blocks += _training_blocks(run)
    blocks += _example_blocks(run)
    return blocks


# --------------------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    # Model output holds tags like <answer>: escaped, or a Markdown viewer would swallow them.
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", "<br>")


def render_markdown(blocks: Sequence[Block], image_dir: str = "report") -> str:
    out: list[str] = []
    for blk in blocks:
        if isinstance(blk, Heading):
            out.append(f"{'#' * blk.level} {blk.text}")
        elif isinstance(blk, Para):
            text = html.escape(blk.text, quote=False)
            out.append(f"> **Note:** {text}" if blk.note else f"**{text}**" if blk.strong else text)
        elif isinstance(blk, TableBlock):
            out.append("| " + " | ".join(_md_cell(h) for h in blk.header) + " |")
            out.append("|" + "---|" * len(blk.header))
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in blk.rows)
        elif isinstance(blk, Image):
            out.append(f"![{blk.caption}]({image_dir}/{blk.name}.png)")
        elif isinstance(blk, Code):
            out.append(f"<details><summary>{html.escape(blk.summary)}</summary>\n\n```yaml\n{blk.text}```\n\n</details>")
        out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f4e79; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #1f4e79; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #c9d3dd; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #eef3f8; }
table.long td { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace;
                font-size: .8em; max-width: 22em; overflow-wrap: anywhere; }
p.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: .4em .7em; }
p.verdict { font-size: 1.08em; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; flex: 1 1 480px; max-width: 640px; }
figure img { width: 100%; height: auto; border: 1px solid #e1e6eb; }
figcaption { font-size: .85em; color: #555; }
details pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    """A single HTML file: inline CSS and images as data URIs, nothing fetched from elsewhere."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
    ]
    in_figures = False
    for blk in blocks:
        if in_figures and not isinstance(blk, Image):
            out.append("</div>")
            in_figures = False
        if isinstance(blk, Heading):
            out.append(f"<h{blk.level}>{esc(blk.text)}</h{blk.level}>")
        elif isinstance(blk, Para):
            cls = ' class="note"' if blk.note else ' class="verdict"' if blk.strong else ""
            out.append(f"<p{cls}>{esc(blk.text)}</p>")
        elif isinstance(blk, TableBlock):
            cls = ' class="long"' if blk.long_text else ""
            out.append(f"<table{cls}><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in blk.header) + "</tr></thead><tbody>")
            out.extend("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in blk.rows)
            out.append("</tbody></table>")
        elif isinstance(blk, Image):
            if not in_figures:
                out.append('<div class="figures">')
                in_figures = True
            data = base64.b64encode(blk.png).decode("ascii")
            out.append(
                f'<figure><img alt="{esc(blk.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(blk.caption)}</figcaption></figure>"
            )
        elif isinstance(blk, Code):
            out.append(f"<details><summary>{esc(blk.summary)}</summary><pre>{esc(blk.text)}</pre></details>")
    if in_figures:
        out.append("</div>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def build_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write report.md, report.html and report/*.png into run_dir; return report.html's path."""
    run = load_run(run_dir)
    blocks = report_blocks(run)
    image_dir = run.run_dir / "report"
    image_dir.mkdir(exist_ok=True)
    for blk in blocks:
        if isinstance(blk, Image):
            atomic_write_bytes(image_dir / f"{blk.name}.png", blk.png)
    atomic_write_bytes(run.run_dir / "report.md", render_markdown(blocks).encode("utf-8"))
    html_path = run.run_dir / "report.html"
    title = blocks[0].text if isinstance(blocks[0], Heading) else "r3rl run report"
    atomic_write_bytes(html_path, render_html(blocks, title).encode("utf-8"))
    return html_path


def summary_table(run_dir: str | os.PathLike[str]) -> Table:
    """Before/after accuracies for the terminal, with the acc@2 verdict as the caption."""
    root = Path(run_dir)
    before, after = load_eval(root / "eval_before"), load_eval(root / "eval_after")
    table = Table(title=f"r3rl eval: {root.resolve().name}")
    table.add_column("metric", justify="left")
    for col in ("before", "after", "change"):  # a number split over two lines is misread
        table.add_column(col, justify="right", no_wrap=True)
    for key, label in ACC_KEYS:
        b, a = _acc_cell(before, key), _acc_cell(after, key)
        table.add_row(
            label,
            f"{fmt_pct(b.value)} {fmt_ci(b.ci)}" if b else "—",
            f"{fmt_pct(a.value)} {fmt_ci(a.ci)}" if a else "—",
            fmt_change(b, a),
        )
    if before is None and after is None:
        table.caption = "No eval_before/ or eval_after/ results in this run folder."
    else:
        table.caption = significance_sentence("acc@2", _acc_cell(before, "acc@2"), _acc_cell(after, "acc@2"))
    return table
