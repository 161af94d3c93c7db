"""The per-stage sampling settings are mapped in one place (GenerationConfig.sampling) and every reader agrees."""

from __future__ import annotations

import pytest

from r3rl.config import STAGES, Config, EvalConfig, GenerationConfig
from r3rl.errors import InputError


def test_each_stage_reads_its_own_fields():
    g = GenerationConfig(max_attempt_tokens=11, max_reflection_tokens=22, max_retry_tokens=33, attempt_temperature=0.1,
                         reflection_temperature=0.2, retry_temperature=0.3, top_p=0.9, top_k=5)
    got = {s: (g.sampling(s).max_new_tokens, g.sampling(s).temperature) for s in STAGES}
    assert got == {"attempt": (11, 0.1), "reflection": (22, 0.2), "retry": (33, 0.3)}
    assert g.sampling("retry", seed=7).seed == 7 and g.sampling("retry").top_p == 0.9 and g.sampling("retry").top_k == 5
    with pytest.raises(InputError, match="unknown generation stage 'tool'"):
        g.sampling("tool")


def test_eval_overrides_and_objectives_read_the_same_mapping():
    from r3rl.evaluation.accuracy import eval_generation
    from r3rl.training.objectives import build_objective

    g = GenerationConfig(max_retry_tokens=33, retry_temperature=0.0)
    ev = eval_generation(g, EvalConfig(temperature=0.5, max_reflection_tokens=9))
    assert [ev.sampling(s).temperature for s in STAGES] == [0.5, 0.5, 0.5]
    assert ev.sampling("reflection").max_new_tokens == 9 and ev.sampling("retry").max_new_tokens == 33
    assert g.max_reflection_tokens == 256  # the section itself is left as it is
    retry = build_objective("retry")
    assert (retry.temperature(g), retry.max_tokens(g)) == (1.0, 33)  # greedy counts as 1


def test_plan_budgets_evaluation_with_its_own_token_limits():
    from r3rl.training.plan import generated_tokens

    cfg = Config()
    base = generated_tokens(cfg)["evaluation (r3rl eval, once)"]
    cfg.eval.max_retry_tokens = 1
    fewer = generated_tokens(cfg)["evaluation (r3rl eval, once)"]
    per_example = cfg.eval.samples_per_example * (cfg.generation.max_retry_tokens - 1) * 2  # retry + control
    assert base - fewer == cfg.eval.num_examples * per_example
