"""Comparing a math answer with its reference through Hugging Face's math-verify, under a hard time bound.

math-verify parses LaTeX and plain expressions into sympy and compares them
(numerically, symbolically, as sets, intervals, matrices). Sympy can run for
minutes or recurse until the C stack gives out on hostile input (`9^{9^{9^9}}`,
thousands of nested `\\frac`), and math-verify's own guard is `signal.alarm`,
which (a) raises ValueError off the main thread, (b) cannot interrupt work
inside one C call, and (c) cannot survive a crash of the interpreter. So the
comparison runs in a separate worker process (a fresh interpreter running
`_serve`, one JSON line per request and per reply): the caller waits at most `timeout_s`
for the reply, and a worker that is late or dead is killed and replaced. Inside
the worker, math-verify's signal timeouts stay on (the worker's main thread
does the work), so the common slow case ends with a clean "timed out" answer
and no restart.

`MathGrader.grade` never raises: every failure is a failed Verdict with a
plain-sentence reason. Callers bound the size of what they send (see
`r3rl.tasks.math_task`); the worker bounds it again.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
import time
from functools import lru_cache
from typing import Any

from r3rl.types import Verdict

__all__ = ["MathGrader", "default_grader", "MAX_TEXT_CHARS", "NO_FINAL_ANSWER", "WRONG_ANSWER", "UNVERIFIABLE"]

#: longest text (reference or answer) the worker will parse; longer is failed without parsing
MAX_TEXT_CHARS = 2_000
#: seconds to wait for a fresh worker to import math-verify and sympy
_START_TIMEOUT_S = 60.0
#: math-verify's own (signal) timeout inside the worker, in whole seconds as signal.alarm wants
_INNER_TIMEOUT_S = 1

# Failure classes (MathTask.failure_classes says what each means).
NO_FINAL_ANSWER = "no_final_answer"
WRONG_ANSWER = "wrong_answer"
UNVERIFIABLE = "unverifiable"


# --------------------------------------------------------------------- the worker side
@lru_cache(maxsize=4096)
def _parse_reference(text: str) -> Any:
    """A bare reference answer parsed once per worker (the same references come back every step)."""
    from math_verify import parse

    # A bare reference ("5\\sqrt{2}", "(4, 2)") is LaTeX to math-verify only inside a box or $...$.
    return parse(f"\\boxed{{{text}}}", parsing_timeout=_INNER_TIMEOUT_S)


def _compare(reference: str, answer: str) -> tuple[bool, str, str]:
    """(ok, reason, failure class) for one request, in the worker. Exceptions are turned into reasons by the caller."""
    from math_verify import parse, verify

    if len(reference) > MAX_TEXT_CHARS or len(answer) > MAX_TEXT_CHARS:
        return False, f"text too long to parse (limit {MAX_TEXT_CHARS} characters)", UNVERIFIABLE
    # math-verify swallows its own timeouts (an empty parse, a False comparison); the clock tells them apart.
    late = 0.9 * _INNER_TIMEOUT_S
    start = time.perf_counter()
    gold = _parse_reference(reference)
    if not gold:
        return False, f"the reference answer {reference[:80]!r} could not be parsed", UNVERIFIABLE
    start = time.perf_counter()
    pred = parse(answer, parsing_timeout=_INNER_TIMEOUT_S)
    if not pred:
        if time.perf_counter() - start >= late:
            return False, f"parsing the answer timed out after {_INNER_TIMEOUT_S} s", UNVERIFIABLE
        return False, "no mathematical answer could be parsed from the completion", NO_FINAL_ANSWER
    # parse() returns [sympy object, the matched text]; the text is what a person recognises.
    shown = str(pred[-1])[:80]
    start = time.perf_counter()
    if verify(gold, pred, timeout_seconds=_INNER_TIMEOUT_S):
        return True, f"answer {shown} equals the reference {reference[:80]}", ""
    if time.perf_counter() - start >= late:
        return False, f"comparing answer {shown} with the reference {reference[:80]} timed out", UNVERIFIABLE
    return False, f"answer {shown} does not equal the reference {reference[:80]}", WRONG_ANSWER


def _serve(stdin: Any, stdout: Any) -> None:
    """Answer requests until stdin closes: `{"reference", "answer"}` -> `{"ok", "reason", "failure_class"}`."""
    import logging

    # math-verify logs a warning per timeout; the verdict already says so.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    sys.setrecursionlimit(10_000)
    for line in stdin:
        try:
            request = json.loads(line)
            ok, reason, failure_class = _compare(str(request["reference"]), str(request["answer"]))
        except RecursionError:
            ok, reason, failure_class = False, "the answer is nested too deeply to parse", UNVERIFIABLE
        except Exception as e:  # noqa: BLE001 - one bad request must not end the worker; the reason names it
            ok, reason, failure_class = False, f"math-verify failed on this answer ({type(e).__name__})", UNVERIFIABLE
        stdout.write(json.dumps({"ok": bool(ok), "reason": reason, "failure_class": failure_class}) + "\n")
        stdout.flush()


# --------------------------------------------------------------------- the caller side
class MathGrader:
    """One worker process running math-verify; each `grade` call waits at most `timeout_s` seconds.

    Thread-safe (calls are serialised on one worker). The worker starts on the
    first call and after a timeout or crash; its start-up (importing sympy) is
    not counted against `timeout_s`.
    """

    def __init__(self, timeout_s: float = 5.0):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        #: how many workers were killed for running late or found dead (for tests and logs)
        self.restarts = 0
        self._pid = os.getpid()

    # ----------------------------------------------------------------- worker life
    def _start(self) -> None:
        # The worker imports this very r3rl (the parent may have found it through a path set at run time),
        # and only it: a fresh interpreter, not a fork, so no torch threads or CUDA state are inherited.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.insert(0, {package_root!r}); "
                "from r3rl.tasks.math_grade import _serve; _serve(sys.stdin, sys.stdout)")
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, encoding="ascii", errors="replace", bufsize=1,
        )
        self._pid = os.getpid()
        replies: queue.Queue[str | None] = queue.Queue()
        self._replies = replies
        stdout = self._proc.stdout

        def pump() -> None:
            # A reader thread turns the blocking pipe into a queue with a timeout (portable, unlike select on pipes).
            assert stdout is not None
            for line in stdout:
                replies.put(line)
            replies.put(None)  # end of file: the worker has gone

        threading.Thread(target=pump, name="r3rl-math-grade-reader", daemon=True).start()
        self._request("1", "1", _START_TIMEOUT_S)  # wait until sympy is imported

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
            self._proc = None

    def close(self) -> None:
        """Stop the worker (a later call starts a new one)."""
        with self._lock:
            self._kill()

    def _request(self, reference: str, answer: str, timeout_s: float) -> dict[str, Any] | None:
        """The worker's reply, or None when it is late or gone (the worker is then killed)."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"reference": reference, "answer": answer}) + "\n")
            self._proc.stdin.flush()
            line = self._replies.get(timeout=timeout_s)
        except (OSError, queue.Empty, ValueError):
            line = None
        if line is None:
            self._kill()
            self.restarts += 1
            return None
        return json.loads(line)

    # ------------------------------------------------------------------------ grading
    def grade(self, reference: str, answer: str) -> Verdict:
        """Does `answer` (text holding a final answer) equal `reference`? Never raises."""
        if len(reference) > MAX_TEXT_CHARS or len(answer) > MAX_TEXT_CHARS:
            return Verdict(False, f"text too long to parse (limit {MAX_TEXT_CHARS} characters)", UNVERIFIABLE)
        if self._pid != os.getpid():
            # A forked copy of this object: the worker and its pipes belong to the parent process.
            self._proc, self._lock, self._pid = None, threading.Lock(), os.getpid()
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._kill()
                    self._start()
            except Exception as e:  # noqa: BLE001 - a verifier must not raise; say why it could not run
                self._kill()
                return Verdict(False, f"the math verifier could not start ({type(e).__name__}: {e})"[:200],
                               UNVERIFIABLE)
            if self._proc is None:
                return Verdict(False, "the math verifier could not start (its worker process exited)", UNVERIFIABLE)
            start = time.perf_counter()
            reply = self._request(reference, answer, self.timeout_s)
        if reply is None:
            late = time.perf_counter() - start >= self.timeout_s
            why = f"timed out after {self.timeout_s:g} s" if late else "its worker process died"
            return Verdict(False, f"verification stopped: {why}", UNVERIFIABLE)
        # The reason quotes the answer, which may hold lone surrogates that no UTF-8 log file accepts.
        reason = str(reply["reason"]).encode("utf-8", "replace").decode("utf-8")
        return Verdict(bool(reply["ok"]), reason, str(reply["failure_class"]))


_SHARED: dict[float, MathGrader] = {}
_SHARED_LOCK = threading.Lock()


def default_grader(timeout_s: float = 5.0) -> MathGrader:
    """A process-wide grader per timeout, so task instances share one worker instead of one each."""
    with _SHARED_LOCK:
        key = float(timeout_s)
        if key not in _SHARED:
            _SHARED[key] = MathGrader(key)
            atexit.register(_SHARED[key].close)
        return _SHARED[key]
