"""The two-stage rollout workload run by vLLM itself, for bench/rollout.py's `vllm` method.

Runs under vLLM's own Python (its CPU build lives in another virtual environment, without
r3rl), so it needs only vllm and the standard library. bench/rollout.py writes a JSON job
and reads a JSON result:

    job: {"model": dir, "dtype": "float32" | "bfloat16", "contexts": [[ids]], "suffix": [ids],
          "group": G, "reflection_tokens": R, "retry_tokens": T, "stops": [ids],
          "runs": [{"sample": bool, "seed": int, "slice": F}, ...], "enforce_eager": bool,
          "max_num_seqs": int, "threads": int}
    result: {"startup_s": s, "runs": [{"seconds": s, "reflections": [[ids]], "retries": [[ids]]}, ...]}

Stage 1: each context with n=G samples; stage 2: one retry per reflection, its prompt the
context + reflection + suffix ids (prefix caching finds the context's blocks). Greedy runs
(the agreement check) give each context G times with n=1, which vLLM requires. vLLM's CPU
build refuses per-request seeds, so the engine is seeded once (`seed` of the first run)
and sampled runs draw from that one stream; greedy runs need no seed.

    /work/vllm-venv/bin/python bench/vllm_worker.py job.json result.json
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(job_path: str, result_path: str) -> int:
    with open(job_path) as f:
        job = json.load(f)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "all" if not job.get("threads") else f"0-{job['threads'] - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(job.get("kv_gib", 4)))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=job["model"], dtype=job["dtype"], skip_tokenizer_init=True, enable_prefix_caching=True,
              enforce_eager=bool(job.get("enforce_eager", False)), max_num_seqs=int(job.get("max_num_seqs", 128)),
              max_model_len=int(job.get("max_model_len", 4096)), seed=int(job["runs"][0]["seed"]))
    # One untimed request: first-call allocations and any remaining compilation.
    llm.generate([TokensPrompt(prompt_token_ids=job["contexts"][0][:16])],
                 SamplingParams(max_tokens=2, temperature=0.0, detokenize=False), use_tqdm=False)
    startup = time.perf_counter() - t0

    stops = job["stops"]
    runs = []
    for run in job["runs"]:
        contexts = job["contexts"][: run.get("slice") or len(job["contexts"])]
        group = int(run.get("group") or job["group"])
        temp = 1.0 if run["sample"] else 0.0

        def params(tokens: int, n: int) -> SamplingParams:
            return SamplingParams(n=n, max_tokens=tokens, temperature=temp, top_k=0, top_p=1.0,
                                  stop_token_ids=stops, ignore_eos=True, detokenize=False)

        start = time.perf_counter()
        if run["sample"]:
            out = llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts],
                               params(job["reflection_tokens"], group), use_tqdm=False)
        else:  # vLLM refuses n > 1 for greedy sampling: each context G times (prefix caching shares its blocks)
            out = llm.generate([TokensPrompt(prompt_token_ids=c) for c in contexts for _ in range(group)],
                               params(job["reflection_tokens"], 1), use_tqdm=False)
        reflections = [list(o.token_ids) for req in out for o in req.outputs]
        rows = [c for c in contexts for _ in range(group)]
        retry_prompts = [TokensPrompt(prompt_token_ids=c + r + job["suffix"]) for c, r in zip(rows, reflections)]
        out2 = llm.generate(retry_prompts, params(job["retry_tokens"], 1), use_tqdm=False)
        seconds = time.perf_counter() - start
        runs.append({"seconds": seconds, "reflections": reflections,
                     "retries": [list(req.outputs[0].token_ids) for req in out2]})
    with open(result_path, "w") as f:
        json.dump({"startup_s": startup, "runs": runs}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
