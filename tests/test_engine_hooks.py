"""HFEngine's contract with what watches it, on every path: progress counts and transformers' deprecations.

* `on_tokens` (the progress hook) hears of every generated token, on the slot path
  (shared-prefix and copied prompts) as on the micro-batch path; and the progress line
  of an evaluation of a Qwen2 model (slot path) shows the tokens and tok/s it generates.
* No generate call uses a name transformers has deprecated (`past_key_values` became
  `cache` in 5.24): a FutureWarning or DeprecationWarning during a call is an error here,
  and so is transformers' logged "deprecated" warning (the output's old attribute name).
* The engine changes nothing outside its own model forwards: a verifier called from inside
  generation (`then`) runs with no torch function mode, the model's own attention setting and
  its plain linear layers, and the shared model's config is as it was after a call, even one
  that raised.
"""

from __future__ import annotations

import copy
import logging
import re
import subprocess
import sys
import warnings

import pytest
import torch

from r3rl.config import Config
from r3rl.demo import tiny
from r3rl.engine import Continuation, HFEngine
from r3rl.environment.rollout import Rollout
from r3rl.evaluation.accuracy import evaluate_model
from r3rl.tasks.base import Task
from r3rl.types import Generation, SamplingParams, Verdict

# (engine settings, force the micro-batch path)
PATHS = {
    "slots-shared": ({"shared_prefix_attention": True}, False),
    "slots-copied": ({"shared_prefix_attention": False}, False),
    "micro-batches": ({}, True),
    "plain": ({"share_prefix": False, "reuse_cache": False}, False),
}


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model(tok, hidden_size=32, layers=1, heads=2, kv_heads=1).eval()  # Qwen2


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in ("What is 12 + 7?", "Say the word pear.", "1 2 3")]


def _engine(model, tok, path: str, monkeypatch, **extra) -> HFEngine:
    settings, micro = PATHS[path]
    if micro:
        import r3rl.engine.hf as hf_module

        monkeypatch.setattr(hf_module, "supports_slots", lambda model: False)
    return HFEngine(model, tok, **settings, **extra)


def _then(i: int, j: int, depth: int, gen: Generation) -> Continuation | None:
    """One retry per row, continuing the cache for even j and from a new prompt for odd j."""
    if depth > 0:
        return None
    params = SamplingParams(max_new_tokens=3 + j, temperature=1.0)
    if j % 2:
        return Continuation(params, prompt_ids=gen.prompt_ids + [40, 41])
    return Continuation(params, suffix_ids=[40 + i])


def _all(results: list[list[Generation]]) -> list[Generation]:
    out = []
    for row in results:
        for gen in row:
            while gen is not None:
                out.append(gen)
                gen = gen.next
    return out


@pytest.mark.parametrize("path", list(PATHS))
def test_on_tokens_hears_every_generated_token(model, tok, prompts, path, monkeypatch):
    engine = _engine(model, tok, path, monkeypatch, max_batch_size=4)
    steps: list[int] = []
    engine.on_tokens = steps.append
    out = engine.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0, seed=0), n=3, then=_then)
    generated = sum(len(g.token_ids) for g in _all(out))
    assert generated > 3 * len(prompts)  # first generations and retries produced tokens
    assert sum(steps) == generated
    assert all(n > 0 for n in steps) and max(steps) > 1  # per decoding step, several rows at once


class _WordTask(Task):
    """Pass iff the completion is the example's word (the random model fails: reflections and retries run)."""

    name = "word"

    def load_examples(self, split="train", n=None, seed=0):
        return [{"id": f"w{i}", "word": w} for i, w in enumerate(["apple", "pear", "plum", "fig"])][:n]

    def prompt(self, ex):
        return f"Say the word {ex['word']}."

    def verify(self, ex, completion):
        return Verdict(completion.strip() == ex["word"])


def test_eval_progress_line_shows_tokens_and_rate(model, tok, capsys):
    """The `r3rl eval` progress line of a Qwen2 model (slot path) counts its tokens (it read "0 tokens, 0 tok/s")."""
    cfg = Config()
    cfg.generation.max_attempt_tokens = cfg.generation.max_reflection_tokens = cfg.generation.max_retry_tokens = 5
    cfg.eval.num_examples, cfg.eval.samples_per_example = 4, 2
    engine = HFEngine(model, tok)
    evaluate_model(Rollout(engine, _WordTask(), cfg.generation, cfg.rollout), cfg.eval, cfg.seed, show_progress=True)
    shown = re.findall(r"(\d+) tokens, (\d+) tok/s", capsys.readouterr().err)
    assert shown, "no progress line"
    tokens, rate = map(int, shown[-1])
    assert tokens >= 4 * 2 and rate > 0


@pytest.fixture
def deprecations(monkeypatch):
    """transformers' logged deprecation warnings during the test (warning_once bypassed, so none is missed)."""
    seen: list[str] = []

    def record(self, msg, *args, **kwargs):
        if self.name.startswith("transformers") and "deprecat" in str(msg).lower():
            seen.append(str(msg))

    monkeypatch.setattr(logging.Logger, "warning_once", record)
    return seen


@pytest.mark.parametrize("path", list(PATHS))
def test_generate_uses_no_deprecated_transformers_name(model, tok, prompts, path, monkeypatch, deprecations):
    engine = _engine(model, tok, path, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        with torch.no_grad():
            engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0.0), n=2, then=_then)
    assert deprecations == []


class _Raised(Exception):
    pass


@pytest.mark.parametrize("path", list(PATHS))
def test_then_runs_outside_the_engines_forward_scope(model, tok, prompts, path, monkeypatch):
    """bfloat16 weights under cpu_matmul=float32 (every linear rewritten) and the slot attention: none of it is
    seen by `then`, which is where the rollout calls the verifier."""
    half = copy.deepcopy(model).to(torch.bfloat16)
    before = half.config._attn_implementation
    linears = [m for m in half.modules() if isinstance(m, torch.nn.Linear)]
    seen: list[tuple] = []

    def then(i, j, depth, gen):
        seen.append((torch.overrides._get_current_function_mode_stack(), half.config._attn_implementation,
                     [m for m in linears if "forward" in vars(m)]))
        return _then(i, j, depth, gen)

    engine = _engine(half, tok, path, monkeypatch, cpu_matmul="float32")
    engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=1.0, seed=0), n=2, then=then)
    assert seen and all(s == ([], before, []) for s in seen), seen[0]
    assert half.config._attn_implementation == before and not [m for m in linears if "forward" in vars(m)]

    def raising(i, j, depth, gen):
        raise _Raised

    with pytest.raises(_Raised):
        engine.generate(prompts, SamplingParams(max_new_tokens=4, temperature=1.0, seed=0), n=2, then=raising)
    assert half.config._attn_implementation == before and not [m for m in linears if "forward" in vars(m)]


def test_slot_attention_is_registered_by_the_first_engine_not_by_import(model, tok):
    code = ("import r3rl.engine.hf, r3rl.engine.slots as s; from transformers import AttentionInterface as A; "
            "print(s.ATTN_NAME in A._global_mapping)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.split() == ["False"]
    HFEngine(model, tok)
    from transformers import AttentionInterface

    from r3rl.engine.slots import ATTN_NAME

    assert ATTN_NAME in AttentionInterface._global_mapping


def test_a_verifier_called_during_generation_sees_no_engine_state(model, tok):
    """Through the rollout (an evaluation: attempts, reflections, retries; with two rounds a failed retry is
    verified inside the generate call, to decide on the next round): every verify call runs with no torch
    function mode and the model's own attention setting."""
    half = copy.deepcopy(model).to(torch.bfloat16)
    before = half.config._attn_implementation
    seen: list[tuple] = []

    class Watching(_WordTask):
        def verify(self, ex, completion):
            seen.append((torch.overrides._get_current_function_mode_stack(), half.config._attn_implementation))
            return super().verify(ex, completion)

    cfg = Config()
    cfg.generation.max_attempt_tokens = cfg.generation.max_reflection_tokens = cfg.generation.max_retry_tokens = 4
    cfg.eval.num_examples, cfg.eval.samples_per_example, cfg.rollout.rounds = 4, 1, 2
    engine = HFEngine(half, tok, cpu_matmul="float32")
    evaluate_model(Rollout(engine, Watching(), cfg.generation, cfg.rollout), cfg.eval, cfg.seed)
    assert len(seen) > 4 and all(s == ([], before) for s in seen), seen[:3]
