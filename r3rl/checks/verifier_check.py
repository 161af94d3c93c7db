"""Run hostile completions against a task's verifier: count crashes, slow calls, hangs and executions.

    from r3rl.checks import check_task
    report = check_task("countdown", cases=100_000)           # a built-in task
    report = check_task("mypkg.tasks:MyTask", cases=5_000)    # your own, by import path

`r3rl check-task TASK` is the same from the command line. The verifier runs in a child process, so
a call that never returns is killed and counted (a hang) instead of hanging the check, and the
parent goes on from the next case. Every code payload would create a sentinel file if it were ever
executed; the child looks for it after every call, so one execution is caught at its case.

What counts (the report's fields):
    crashes     verify raised, or returned something other than a Verdict(ok: bool, reason: str),
                or changed the example it was given
    slow        calls over `time_limit` seconds (1 s by default; after untimed warm-up calls, WARM_UP)
    hangs       calls still running after `hard_limit` seconds, killed
    executions  cases after which the sentinel file existed
"""

from __future__ import annotations

import json
import mmap
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from r3rl.checks.hostile import SENTINEL, hostile_case
from r3rl.errors import InputError

__all__ = ["TaskReport", "check_task", "check_tasks", "parse_options", "report_table", "to_json"]

CHUNK = 500  # cases per request to the child; a hang re-runs at most this many
MAX_FINDINGS = 20  # findings kept in full per task (all are counted)
LONG_REASON = 2_000  # a reason longer than this is logged and may reach the model: worth knowing
EXAMPLES = 16  # distinct examples the cases are spread over


@dataclass
class TaskReport:
    task: str
    cases: int = 0
    crashes: int = 0
    slow: int = 0
    hangs: int = 0
    executions: int = 0
    long_reasons: int = 0
    slowest_s: float = 0.0
    slowest_case: int = -1
    slowest_family: str = ""
    elapsed_s: float = 0.0
    families: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    skipped: str = ""
    seed: int = 0

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.slow or self.hangs or self.executions)

    def add_finding(self, **finding: Any) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)


# ---------------------------------------------------------------------------------------- child side
WARM_UP = ("", "0", "The answer is $\\frac{1}{2}$.", "\\boxed{x + 1}", "<answer>2 + 3</answer>")
_BEAT = struct.Struct("qd")  # (case being verified, perf_counter at its start; 0 when idle)


def _load_examples(task: Any) -> list[dict[str, Any]]:
    for split in ("test", "train"):
        examples = task.load_examples(split, EXAMPLES, seed=0)
        if examples:
            return list(examples)
    raise ValueError("the task returned no examples for 'test' or 'train'")


def _child_main() -> None:
    """The child: read a setup line, then serve [start, stop) requests on stdin, one JSON answer each."""
    reply = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever the task prints goes to stderr, never into the answers
    setup = json.loads(sys.stdin.readline())
    sys.path[:0] = [p for p in setup["sys_path"] if p not in sys.path]
    with open(setup["beat"], "r+b") as f, mmap.mmap(f.fileno(), _BEAT.size) as beat:
        _serve(setup, reply, beat)


def _serve(setup: dict[str, Any], reply: Any, beat: Any) -> None:
    from r3rl.tasks import load_task
    from r3rl.types import Verdict

    seed, sentinel, time_limit = setup["seed"], setup["sentinel"], setup["time_limit"]

    def send(obj: Any) -> None:
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    try:
        task = load_task(setup["spec"], **setup["options"])
        examples = _load_examples(task)
    except Exception as e:  # a task that cannot build examples here (e.g. data not available offline)
        send({"skip": f"{type(e).__name__}: {e}"})
        return
    # Untimed warm-up calls first: a verifier's one-time setup (math's grader process, sympy and its LaTeX
    # parser, seconds on a loaded machine) is not a slow input. Plain, LaTeX and tagged answers reach the
    # parsers a task loads lazily; whatever they raise is found again, and counted, by the cases.
    for text in WARM_UP:
        _BEAT.pack_into(beat, 0, -1, time.perf_counter())  # case -1: a warm-up call that hangs is one too
        try:
            task.verify(examples[0], text)
        except Exception:  # noqa: BLE001
            pass
    _BEAT.pack_into(beat, 0, -1, 0.0)
    send({"ready": len(examples)})
    fingerprints = [json.dumps(ex, sort_keys=True, default=str) for ex in examples]
    for line in sys.stdin:
        start, stop = json.loads(line)
        out: dict[str, Any] = {"cases": 0, "crashes": 0, "slow": 0, "executions": 0, "long_reasons": 0,
                               "slowest_s": 0.0, "slowest_case": -1, "slowest_family": "", "families": {},
                               "findings": []}
        for i in range(start, stop):
            ex = examples[i % len(examples)]
            family, text = hostile_case(seed, i, ex)
            text = text.replace(SENTINEL, sentinel)
            problem = ""
            t0 = time.perf_counter()
            _BEAT.pack_into(beat, 0, i, t0)
            try:
                v = task.verify(ex, text)
            except BaseException as e:  # noqa: BLE001 - any escape from verify is the finding
                v = None
                problem = f"raised {type(e).__name__}: {str(e)[:300]}"
                tb = traceback.extract_tb(e.__traceback__)
                if tb:
                    problem += f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})"
            dt = time.perf_counter() - t0
            _BEAT.pack_into(beat, 0, i, 0.0)
            out["cases"] += 1
            out["families"][family] = out["families"].get(family, 0) + 1
            if not problem and not (isinstance(v, Verdict) and isinstance(v.ok, bool) and isinstance(v.reason, str)):
                problem = f"returned {v!r:.200} instead of Verdict(ok: bool, reason: str)"
            if not problem and json.dumps(ex, sort_keys=True, default=str) != fingerprints[i % len(examples)]:
                problem = "changed the example it was given"
                ex.clear()
                ex.update(json.loads(fingerprints[i % len(examples)]))
            if problem:
                out["crashes"] += 1
                out["findings"].append({"case": i, "family": family, "kind": "crash", "detail": problem,
                                        "completion": repr(text[:200])})
            elif len(v.reason) > LONG_REASON:
                out["long_reasons"] += 1
            if dt > time_limit:
                out["slow"] += 1
                out["findings"].append({"case": i, "family": family, "kind": "slow", "detail": f"{dt:.2f} s",
                                        "completion": repr(text[:200])})
            if dt > out["slowest_s"]:
                out["slowest_s"], out["slowest_case"], out["slowest_family"] = dt, i, family
            if os.path.exists(sentinel):
                out["executions"] += 1
                out["findings"].append({"case": i, "family": family, "kind": "execution",
                                        "detail": "the sentinel file appeared", "completion": repr(text[:200])})
                os.unlink(sentinel)
        out["findings"] = out["findings"][:MAX_FINDINGS]
        send(out)


# --------------------------------------------------------------------------------------- parent side
def _merge(rep: TaskReport, out: dict[str, Any]) -> None:
    for k in ("cases", "crashes", "slow", "executions", "long_reasons"):
        setattr(rep, k, getattr(rep, k) + out[k])
    for fam, n in out["families"].items():
        rep.families[fam] = rep.families.get(fam, 0) + n
    if out["slowest_s"] > rep.slowest_s:
        rep.slowest_s, rep.slowest_case, rep.slowest_family = out["slowest_s"], out["slowest_case"], out["slowest_family"]
    for f in out["findings"]:
        rep.add_finding(**f)


_CHILD = "from r3rl.checks.verifier_check import _child_main; _child_main()"


class _Child:
    """One verifier process, fed chunks of case numbers; killable when a call never returns."""

    def __init__(self, setup: dict[str, Any], beat: Any):
        self.beat = beat
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8")
        self.send(setup)

    def send(self, obj: Any) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def answer(self, hard_limit: float) -> tuple[str, Any]:
        """("ok", reply) | ("hang", case) | ("died", case)."""
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if line:
                    return "ok", json.loads(line)
                return "died", _BEAT.unpack_from(self.beat, 0)[0]
            case, t0 = _BEAT.unpack_from(self.beat, 0)
            if t0 and time.perf_counter() - t0 > hard_limit:
                return "hang", case
            if self.proc.poll() is not None:
                return "died", case

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def check_task(spec: str, options: dict[str, Any] | None = None, *, cases: int = 10_000, seed: int = 0,
               time_limit: float = 1.0, hard_limit: float = 10.0, progress: bool = False) -> TaskReport:
    """Run `cases` hostile completions (cases 0 .. cases-1 of `seed`) against the task's verifier."""
    rep = TaskReport(task=spec, seed=seed)
    t0 = time.perf_counter()
    child: _Child | None = None
    # The payloads write to this path if executed; a directory of our own makes the check exact.
    with tempfile.TemporaryDirectory(prefix="r3rl-check-") as tmp, \
            tempfile.NamedTemporaryFile(prefix="r3rl-beat-") as beat_file:
        beat_file.write(b"\0" * _BEAT.size)
        beat_file.flush()
        shm = mmap.mmap(beat_file.fileno(), _BEAT.size)
        sentinel = os.path.join(tmp, "EXECUTED")
        setup = {"spec": spec, "options": dict(options or {}), "seed": seed, "sentinel": sentinel,
                 "time_limit": time_limit, "beat": beat_file.name, "sys_path": [os.getcwd()] + sys.path}
        todo = [(a, min(a + CHUNK, cases)) for a in range(0, cases, CHUNK)]
        try:
            while todo:
                if child is None:
                    _BEAT.pack_into(shm, 0, -1, 0.0)
                    child = _Child(setup, shm)
                    kind, first = child.answer(hard_limit * 10)
                    if kind == "hang":  # a warm-up call (WARM_UP) never returned
                        rep.hangs += 1
                        rep.add_finding(case=-1, family="warm-up", kind="hang", completion="",
                                        detail=f"no answer to a warm-up call after {hard_limit * 10:.0f} s")
                        break
                    if kind != "ok" or "skip" in first:
                        rep.skipped = first["skip"] if kind == "ok" else "the task process exited while loading"
                        break
                a, b = todo.pop(0)
                child.send([a, b])
                kind, out = child.answer(hard_limit)
                if kind == "ok":
                    _merge(rep, out)
                else:  # the current case hung or killed the process: it is the finding; redo the rest
                    i = out if a <= out < b else a
                    child.close()
                    child = None
                    family, _ = hostile_case(seed, i, None)
                    rep.hangs += 1
                    rep.cases += 1
                    rep.add_finding(case=i, family=family, kind="hang" if kind == "hang" else "process died",
                                    detail=f"no answer after {hard_limit:.0f} s" if kind == "hang" else "the verifier's process exited",
                                    completion=f"hostile_case({seed}, {i}, example {i % EXAMPLES})")
                    todo[:0] = [r for r in ((a, i), (i + 1, b)) if r[0] < r[1]]
                if progress:
                    print(f"\r{spec}: {rep.cases:,}/{cases:,} cases", end="", file=sys.stderr, flush=True)
        finally:
            if child is not None:
                child.proc.stdin.close()
                try:
                    child.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
                child.close()
            shm.close()
        leftovers = list(Path(tmp).iterdir())
        if leftovers:  # anything else a payload managed to create counts too
            rep.executions += len(leftovers)
            rep.add_finding(case=-1, family="?", kind="execution", detail=f"files appeared: {leftovers}", completion="")
    if progress:
        print(file=sys.stderr)
    rep.elapsed_s = time.perf_counter() - t0
    return rep


def check_tasks(specs: list[str] | None = None, **kwargs: Any) -> list[TaskReport]:
    """check_task for each spec (default: every registered task)."""
    from r3rl.tasks import available_tasks

    return [check_task(s, **kwargs) for s in (specs or list(available_tasks()))]


def parse_options(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings to task options; values read as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--option {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def report_table(reports: list[TaskReport]) -> str:
    """A Markdown table of the figures (what RELIABILITY.md shows)."""
    lines = ["| task | cases | crashes | calls > 1 s | hangs killed | executions | slowest call | slowest case (family) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in reports:
        if r.skipped:
            lines.append(f"| {r.task} | skipped: {r.skipped[:80]} | | | | | | |")
            continue
        lines.append(f"| {r.task} | {r.cases:,} | {r.crashes} | {r.slow} | {r.hangs} | {r.executions} | "
                     f"{r.slowest_s * 1000:.1f} ms | {r.slowest_case} ({r.slowest_family}) |")
    return "\n".join(lines)


def to_json(reports: list[TaskReport]) -> str:
    return json.dumps([asdict(r) | {"clean": r.clean} for r in reports], indent=2, ensure_ascii=False)

