"""The model card (README.md) of a trained model folder, and the optional push to the Hugging Face Hub.

The card is built from the run folder alone (config.yaml, metrics.jsonl,
eval_before/ and eval_after/, read by `r3rl.reporting.report.load_run`), so it
can be rewritten whenever an evaluation lands: `r3rl train` writes it once the
trainer has saved `final/` (no "after" numbers yet), and `r3rl demo` rewrites it
after its closing evaluation. Its YAML front matter is what the Hub indexes (base_model,
library_name, tags, license when the base model's own card states one, and a
model-index with the after-training accuracies); the body says what was trained,
how (with a link to the paper), on what settings, for how many steps, and the
before/after accuracies with their 95% intervals.

`push_folder` uploads a folder with huggingface_hub's `upload_folder`;
`publish_final` (called by `r3rl train` and `r3rl demo` after training) uses it
when `train.push_to_hub` is set. Training itself never imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from r3rl.engine.loading import resolve_model_name
from r3rl.engine.provenance import folder_weights
from r3rl.errors import InputError
from r3rl.reporting.classes_section import failure_class_card
from r3rl.reporting.compare import before_after
from r3rl.reporting.document import CONFIG_SUMMARY
from r3rl.reporting.run import ACC_KEYS, EvalResults, RunData, load_run, lookup
from r3rl.reporting.wording import fmt_change, fmt_ci, fmt_pct, significance_sentence
from r3rl.runtime.io import atomic_write_text

__all__ = ["build_model_card", "write_model_card", "write_model_cards", "push_folder", "publish_final", "hub_repo_id"]

PAPER_URL = "https://arxiv.org/abs/2505.24726"
TAGS = ("r3rl", "grpo", "reflection", "self-reflection", "reinforcement-learning")
CITATION = """@article{bensal2025reflect,
  title   = {Reflect, Retry, Reward: Self-Improving LLMs via Reinforcement Learning},
  author  = {Bensal, Shelly and Jamil, Umar and Bryant, Christopher and Russak, Melisa and Kamble, Kiran
             and Mozolevskyi, Dmytro and Ali, Muayad and AlShikh, Waseem},
  journal = {arXiv preprint arXiv:2505.24726},
  year    = {2025}
}"""


def _valid_repo_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and p not in (".", "..") and not p.startswith((".", "-")) for p in parts)


def hub_repo_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub model id ("Qwen/Qwen2.5-1.5B-Instruct") and is not a local folder, else None.

    Only Hub ids belong in `base_model`: the Hub links and validates it, and a
    local path would leak a machine's directory layout into a public card.
    """
    if not name or os.path.exists(name) or not _valid_repo_id(name):
        return None
    if resolve_model_name(name) != name:  # an alias of a local folder (e.g. "demo"), not a Hub repo
        return None
    return name


def _base_model(config: dict[str, Any]) -> str | None:
    """The model training started from: model.base for an adapter folder, else model.name_or_path."""
    return lookup(config, "model.base") or lookup(config, "model.name_or_path")


def _base_license(base: str | None) -> str | None:
    """The license in the base model's own README front matter, when the base is a local folder with one."""
    base = resolve_model_name(base) if base else base
    if not base or not (Path(base) / "README.md").is_file():
        return None
    try:
        # A README without front matter has no license to read; huggingface_hub would also log "Repo card
        # metadata block was not found" for it (the demo model's README), a warning no user can act on.
        if not (Path(base) / "README.md").read_text(encoding="utf-8").startswith("---"):
            return None
        return ModelCard.load(Path(base) / "README.md").data.to_dict().get("license")
    except Exception:  # noqa: BLE001 - a base card we cannot read just leaves the license out
        return None


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _acc_text(ev: EvalResults | None, key: str) -> str:
    acc = ev.acc.get(key) if ev is not None else None
    if acc is None:
        return "—"
    return fmt_pct(acc.value) + (f" {fmt_ci(acc.ci)}" if acc.ci else "")


def _settings_rows(run: RunData, steps_done: int | None) -> list[tuple[str, str]]:
    rows = []
    for label, paths in CONFIG_SUMMARY:
        if label in ("model", "task"):  # the card words these itself
            continue
        value = lookup(run.config, *paths)
        if label == "steps":
            planned = value
            value = f"{steps_done} of {planned}" if steps_done is not None and steps_done != planned else planned
        if value is not None:
            rows.append((label, str(value)))
    for label, path in (("loss aggregation", "train.loss_aggregation"), ("PPO clip range", "train.clip_eps")):
        if (v := lookup(run.config, path)) is not None:
            rows.append((label, str(v)))
    lora = lookup(run.config, "train.lora")
    if isinstance(lora, bool):
        rows.append(("fine-tuning", (f"LoRA r={lookup(run.config, 'train.lora_r')}, "
                                     f"alpha={lookup(run.config, 'train.lora_alpha')}") if lora else "all weights"))
    return rows


def _weights_row(folder: Path) -> list[tuple[str, str]]:
    """The weights this card describes (provenance's fingerprint, which results.json's "weights" is checked against)."""
    weights = folder_weights(folder)
    return [("weights fingerprint", f"`{weights}`")] if weights else []


def _eval_section(run: RunData) -> list[str]:
    if run.before is None and run.after is None:
        return ["No evaluation was recorded in the run folder (`eval_before/`, `eval_after/`): run `r3rl eval` "
                "on the base and the trained model to add acc@1 / acc@2 here."]
    # numbers that no longer describe the weights they name are shown only under a warning (reporting/run.py)
    # (no paths: a card is published, and the run folder's layout is this machine's)
    lines = [f"**Warning:** the run's `{name}/results.json` measured other weights than "
             f"{'this model holds' if name == 'eval_after' else 'the base model'} (trained further or replaced after that "
             f"evaluation), so these numbers are stale; evaluate again (`r3rl report` then rewrites this card).\n"
             for name in run.stale if name in ("eval_before", "eval_after")]
    lines += ["| metric | before training | after training | change |", "| --- | --- | --- | --- |"]
    for key, label in ACC_KEYS:
        b = run.before.acc.get(key) if run.before else None
        a = run.after.acc.get(key) if run.after else None
        lines.append(f"| {label} | {_acc_text(run.before, key)} | {_acc_text(run.after, key)} | {fmt_change(b, a)} |")
    lines.append("")
    sizes = [f"{label} {ev.n} held-out examples x {ev.samples} sample(s)"
             for label, ev in (("before:", run.before), ("after:", run.after)) if ev is not None and ev.n is not None]
    lines.append("acc@1 is first-try accuracy; acc@2 is accuracy after one reflection and retry; the control retries "
                 "without a reflection (the model is only told to try again). Brackets are 95% intervals"
                 + (f"; {'; '.join(sizes)}." if sizes else "."))
    paired = before_after("acc@2", run.before, run.after)
    if paired.result is not None:  # needs both evals' episodes.jsonl; without them the table says enough
        lines += ["", significance_sentence(paired)]
    return lines


def _eval_results(run: RunData, task: str) -> list[EvalResult]:
    """The after-training accuracies as Hub model-index entries (the Hub shows them on the model page)."""
    if run.after is None or "eval_after" in run.stale:  # the Hub would index numbers of other weights
        return []
    out = []
    for key, label in ACC_KEYS:
        acc = run.after.acc.get(key)
        if acc is not None:
            out.append(EvalResult(task_type="text-generation", dataset_type=task, dataset_name=f"{task} (held-out split)",
                                  metric_type="accuracy", metric_name=label, metric_value=round(acc.value, 4)))
    return out


def _usage(name: str, adapter: bool) -> str:
    if adapter:
        return (f"```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained({name!r})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({name!r})\n```")
    return (f"```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({name!r})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({name!r})\n```")


def build_model_card(run_dir: str | os.PathLike[str], folder: str | os.PathLike[str],
                     repo_id: str | None = None) -> ModelCard:
    """The card of model folder `folder` (final/ or final-merged/) of run `run_dir`.

    `repo_id` names the model in the title and the usage snippet (the Hub id it
    is pushed to); without it, the folder's path is used.
    """
    run = load_run(run_dir)
    folder = Path(folder)
    adapter = _is_adapter(folder)
    task = str(lookup(run.config, "task.name") or "unknown task")
    base = _base_model(run.config)
    base_id = hub_repo_id(base)
    # the step the weights named were saved at (weights.json), else the last one logged
    steps_done = run.final_step if run.final_step is not None else run.metrics[-1]["step"] if run.metrics else None
    name = repo_id or str(folder)
    title = repo_id.split("/")[-1] if repo_id else f"{Path(run_dir).name}/{folder.name}"
    data = ModelCardData(
        base_model=base_id,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        license=_base_license(base),
        tags=list(TAGS) + [task] + (["lora"] if adapter else []),
        model_name=title if run.after is not None else None,
        eval_results=_eval_results(run, task) or None,
    )
    alias_of = resolve_model_name(base) if base else base
    base_text = (f"[{base_id}](https://huggingface.co/{base_id})" if base_id
                 else f"`{base}` (a local model)" if alias_of == base else f"`{base}` (a local model named by an alias)")
    what = "a LoRA adapter on" if adapter else "a fine-tune of"
    body = [
        f"# {title}",
        "",
        f"This model is {what} {base_text}, trained with r3rl on the `{task}` task to write better "
        "self-reflections: after a failed first attempt it reflects on what went wrong, and the reflection "
        "helps its second attempt.",
        "",
        "## Method",
        "",
        f"Reflect, Retry, Reward (Bensal et al., 2025, [arXiv 2505.24726]({PAPER_URL})). The model attempts a "
        "task with a verifiable answer; when the verifier says the attempt failed (and nothing else), the model "
        "writes a self-reflection and tries again with the reflection in the conversation. GRPO trains the "
        "reflection tokens only: several reflections are sampled per failure, each is rewarded by whether the "
        "retry after it passed, and advantages are normalised within each group. The task, the failed attempt "
        "and the retry receive no gradient.",
        "",
        "## Training",
        "",
        *([f"**Warning:** this folder holds other weights than the run saved in `{folder.name}/` (`weights.json`), "
           "so the training and evaluation below may not describe them.", ""] if "final" in run.stale else []),
        "| setting | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in [("base model", base_text), ("task", f"`{task}`")] + _settings_rows(run, steps_done)
          + _weights_row(folder)],
        "",
        "## Evaluation",
        "",
        *_eval_section(run),
        "",
        "### By failure class",
        "",
        failure_class_card(run),
        "",
        "## Usage",
        "",
        _usage(name, adapter),
        "",
        "The model expects the chat format it was trained with: the task as the user's turn; after a failed "
        "answer, r3rl's reflect instruction, then its retry instruction (`r3rl.environment.prompts`).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(run_dir: str | os.PathLike[str], folder: str | os.PathLike[str],
                     repo_id: str | None = None) -> Path:
    """Write (atomically) the card of `folder` as folder/README.md; returns its path."""
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(build_model_card(run_dir, folder, repo_id)))
    return path


def write_model_cards(run_dir: str | os.PathLike[str], repo_id: str | None = None) -> list[Path]:
    """Rewrite the cards of the run's final/ and final-merged/ folders (those that exist) from the run folder."""
    root = Path(run_dir)
    return [write_model_card(root, f, repo_id if f.name == "final" else None)
            for f in (root / "final", root / "final-merged") if f.is_dir()]


def push_folder(folder: str | os.PathLike[str], repo_id: str, *, private: bool | None = None,
                allow_patterns: list[str] | None = None, commit_message: str = "Upload model trained with r3rl",
                upload: Callable[..., Any] | None = None, create_repo: Callable[..., Any] | None = None) -> str:
    """Create the Hub model repo if needed and upload `folder` to it; returns the repo URL.

    `upload` and `create_repo` default to huggingface_hub's `upload_folder` and
    `create_repo` (tests pass fakes). Credentials come from huggingface_hub's
    usual places (`hf auth login`, HF_TOKEN).
    """
    import huggingface_hub

    upload = upload or huggingface_hub.upload_folder
    create_repo = create_repo or huggingface_hub.create_repo
    if not _valid_repo_id(repo_id):
        raise InputError(f"train.hub_model_id {repo_id!r} is not a Hub model id like 'user/model-name'")
    create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    upload(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message,
           allow_patterns=allow_patterns)
    return f"https://huggingface.co/{repo_id}"


def publish_final(run_dir: str | os.PathLike[str], final: str | os.PathLike[str], push_to_hub: bool = False,
                  hub_model_id: str = "") -> list[Path]:
    """What `r3rl train` does after training (on the main process): a card in final/ (and final-merged/),
    then, when `push_to_hub`, the upload of `final` (the adapter or the full weights) to `hub_model_id`.
    Returns the cards written."""
    cards = write_model_cards(run_dir, hub_model_id or None)
    if push_to_hub:
        url = push_folder(final, hub_model_id)
        print(f"pushed {final} to {url}", flush=True)
    return cards
