"""What the math task's worker process costs: math-verify in-process vs through `MathGrader`.

    PYTHONPATH=. python bench/math_grade.py [--repeats 5]

Grades every built-in sample problem against five completions (boxed right,
boxed wrong, unboxed right, an expression, units) once per repeat. The first
pass warms each side's caches (math-verify's and sympy's, which live in the
process that parses, so they cannot be cleared fairly on both sides) and is
reported on its own; the median is over the warm passes after it. Prints the
per-call times, their ratio and difference, and the worker's start-up time. Run on the main thread (where math-verify's
signal timeout works) so the in-process figure is the fair baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time

from r3rl.tasks.math_grade import MathGrader
from r3rl.tasks.math_sample import SAMPLE
from r3rl.tasks.math_task import reference_answer


def completions(reference: str) -> list[str]:
    return [f"so \\boxed{{{reference}}}", "\\boxed{123456}", f"The answer is {reference}",
            f"\\boxed{{{reference} + 0}}", f"\\boxed{{{reference} \\text{{ units}}}}"]


def in_process(reference: str, answer: str) -> bool:
    from math_verify import parse, verify

    return verify(parse(f"\\boxed{{{reference}}}", parsing_timeout=1), parse(answer, parsing_timeout=1),
                  timeout_seconds=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pairs = [(ref, c) for ref in (reference_answer(r["answer"]) for r in SAMPLE) for c in completions(ref)]

    grader = MathGrader(timeout_s=5.0)
    start = time.perf_counter()
    grader.grade("1", "\\boxed{1}")
    startup = time.perf_counter() - start

    local, remote = [], []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        for ref, c in pairs:
            in_process(ref, c)
        local.append((time.perf_counter() - start) / len(pairs))
        start = time.perf_counter()
        for ref, c in pairs:
            grader.grade(ref, c)
        remote.append((time.perf_counter() - start) / len(pairs))
    grader.close()
    lm, rm = statistics.median(local[1:]), statistics.median(remote[1:])
    print(f"{len(pairs)} gradings x {args.repeats} warm repeats (median of per-pass mean per call)")
    print(f"  first pass, cold caches: in-process {local[0] * 1e3:.3f} ms/call, worker {remote[0] * 1e3:.3f} ms/call")
    print(f"  math-verify in-process : {lm * 1e3:7.3f} ms/call")
    print(f"  MathGrader (worker)    : {rm * 1e3:7.3f} ms/call   ratio {rm / lm:.2f}x, overhead {(rm - lm) * 1e3:.3f} ms")
    print(f"  worker start-up        : {startup:7.3f} s (once, and after each timeout)")


if __name__ == "__main__":
    main()
