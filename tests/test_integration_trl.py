"""TRL integration: two real GRPOTrainer steps train the reflection tokens only, rewarded by the retry's verdict."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402

from r3rl.config import GenerationConfig, RolloutConfig  # noqa: E402
from r3rl.demo import model_path as demo_model_path  # noqa: E402
from r3rl.engine.hf import HFEngine  # noqa: E402
from r3rl.environment import prompts  # noqa: E402
from r3rl.environment.rollout import Failure, Rollout  # noqa: E402
from r3rl.integrations.trl import ReflectionRollout, decode_generated, reflection_dataset, retry_reward  # noqa: E402
from r3rl.runtime.io import JsonlWriter  # noqa: E402
from r3rl.tasks import load_task  # noqa: E402

G = 4  # reflections per failure


def _failures(task, n: int) -> list[Failure]:
    # A wrong sum in the answer tags: a real failed attempt of the addition task.
    exs = task.load_examples("train", n=n, seed=0)
    return [Failure(ex, f"<answer>{ex['a'] + ex['b'] + 1}</answer>", "", task.example_id(ex)) for ex in exs]


def test_dataset_rows_are_r3rl_reflection_contexts(tmp_path):
    """The failure-set file becomes one prompt per failed attempt, the conversation r3rl's Rollout builds."""
    from transformers import AutoTokenizer

    task = load_task("addition")
    fails = _failures(task, 3)
    path = tmp_path / "failures.jsonl"
    with JsonlWriter(path) as w:
        for f in fails:  # two failed attempts for each example, as `r3rl mine` writes them
            w.write({"example_id": f.example_id, "example": f.example,
                     "failed_attempts": [f.attempt_text, "no idea"], "reasons": ["wrong sum", "no answer tags"]})
    ds = reflection_dataset(path, task)
    assert len(ds) == 6 and ds.column_names == ["prompt", "example", "example_id", "tools"]
    assert len(reflection_dataset(path, task, max_per_example=1)) == 3

    tok = AutoTokenizer.from_pretrained(demo_model_path())
    roll = Rollout(HFEngine(_model(), tok), task, GenerationConfig(), RolloutConfig())
    for row, f in zip(ds, [Failure(f.example, t, r, f.example_id) for f in fails
                           for t, r in [(f.attempt_text, "wrong sum"), ("no idea", "no answer tags")]]):
        assert prompts.encode(tok, row["prompt"]) == prompts.encode(tok, roll._conversation(f))
        assert json.loads(row["example"]) == f.example and row["example_id"] == f.example_id and row["tools"] == ""


def test_tools_are_looked_up_by_prompt_and_unknown_prompts_fail():
    task = load_task("function_calling")
    ex = task.load_examples("train", n=1)[0]
    ds = reflection_dataset([Failure(ex, "[]", "", "fc-0")], task)
    rollout = ReflectionRollout(ds)
    assert rollout.tools_for(ds[0]["prompt"]) == task.tools(ex)
    with pytest.raises(ValueError, match="not in the datasets given to ReflectionRollout"):
        rollout.tools_for([{"role": "user", "content": "something else"}])


def test_retry_reward_is_the_verdict_on_the_retry():
    task = load_task("addition")
    ex = json.dumps({"a": 2, "b": 3})
    reward = retry_reward(task)
    # the completion (reflection) says 5, but only the retry is judged
    got = reward(prompts=[None] * 3, completions=["<answer>5</answer>"] * 3, example=[ex] * 3,
                 retry_text=["<answer>5</answer>", "<answer>6</answer>", "five"])
    assert got == [1.0, 0.0, 0.0]


def _model():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(demo_model_path(), dtype=torch.float32)


def test_two_grpo_steps_train_reflection_tokens_only(tmp_path, monkeypatch):
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    task = load_task("addition")
    fails = _failures(task, 4)
    by_id = {f.example_id: f for f in fails}
    ds = reflection_dataset(fails, task)
    tok = AutoTokenizer.from_pretrained(demo_model_path())
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]

    batches, rewards_seen, generations = [], [], []
    reward_fn = retry_reward(task)

    def recording_reward(**kw):
        out = reward_fn(**kw)
        rewards_seen.append({"example_id": list(kw["example_id"]), "retry_text": list(kw["retry_text"]),
                             "example": list(kw["example"]), "reward": out})
        return out

    recording_reward.__name__ = "r3rl_retry"

    class Recording(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            batches.append({k: v.detach().clone() for k, v in out.items() if torch.is_tensor(v)})
            return out

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"), use_cpu=True, per_device_train_batch_size=2 * G, num_generations=G,
        max_completion_length=48, max_steps=2, learning_rate=1e-3, seed=0, report_to="none",
        save_strategy="no", logging_steps=1, bf16=False, disable_tqdm=True,
    )
    trainer = Recording(model=model, processing_class=tok, args=args, train_dataset=ds,
                        rollout_func=ReflectionRollout(ds), reward_funcs=recording_reward)
    generate = trainer._generate_single_turn

    def recording_generate(prompt_ids, images, mm, n):
        ids, logprobs = generate(prompt_ids, images, mm, n)
        generations.append((list(prompt_ids), [list(x) for x in ids]))
        return ids, logprobs

    trainer._generate_single_turn = recording_generate
    trainer.train()

    assert len(batches) == 2 and len(rewards_seen) == 2 and len(generations) == 4  # reflections + retries a step
    roll = Rollout(HFEngine(model, tok), task, GenerationConfig(), RolloutConfig())
    stops = list(trainer.eos_token_ids)
    all_rewards = []
    for step, batch in enumerate(batches):
        contexts, reflections = generations[2 * step]
        retry_prompts, retries = generations[2 * step + 1]
        seen = rewards_seen[step]
        assert len(contexts) == len(retry_prompts) == 2 * G
        for i in range(2 * G):
            failure = by_id[seen["example_id"][i]]
            # the prompt TRL trains under is r3rl's own reflection context for this failure
            prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()  # [P_i]
            assert prompt == contexts[i] == prompts.encode(tok, roll._conversation(failure))
            # the completion mask covers exactly the reflection's tokens: no retry, no padding
            mask = batch["completion_mask"][i].bool()  # [T]
            assert batch["completion_ids"][i][mask].tolist() == reflections[i]
            assert int(mask.sum()) == len(reflections[i]) > 0
            # the retry was generated after that reflection, in r3rl's retry conversation
            suffix = prompts.continuation_suffix(tok, roll._conversation(failure), prompts.DEFAULT_RETRY, None,
                                                 reflections[i], stops)
            assert retry_prompts[i] == contexts[i] + reflections[i] + suffix
            assert seen["retry_text"][i] == decode_generated(tok, [retries[i]], stops)[0]
            # the reward is the task's verdict on the retry (not on the reflection)
            assert seen["reward"][i] == float(task.verify(failure.example, seen["retry_text"][i]).ok)
        # the reward reaches the loss: GRPO group advantages worked out from it
        r = torch.tensor(seen["reward"]).view(2, G)  # [failures, G]
        adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
        torch.testing.assert_close(batch["advantages"], adv.flatten(), rtol=1e-5, atol=1e-5)
        all_rewards += seen["reward"]
    assert set(all_rewards) == {0.0, 1.0}  # the seed gives both verdicts, so groups carry signal
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
