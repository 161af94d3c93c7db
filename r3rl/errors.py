"""The project's own error types: what `r3rl` prints as one sentence instead of a traceback.

An `R3RLError` means the user can fix something: a config field, a data file, a model folder, a
checkpoint, a command-line argument. Its message is one actionable sentence naming the file, field or
row. The command line catches these (and OSError: a missing path, a full disk, a read-only folder)
and prints the message; every other exception is a bug in r3rl or a library and keeps its traceback.

The subclasses also derive from the built-in type their call sites raised before (ValueError,
RuntimeError), so code that catches those keeps working.

    R3RLError
      InputError(ValueError)        a value or file the user gave is wrong (options, rows, arguments)
        ConfigError                 r3rl.config: a config field, file or override
        DataError                   r3rl.tasks.data: a dataset file or hub dataset
        DamagedFileError            r3rl.runtime.file_checks: a truncated or garbled JSON / weights / state file
        ReportError                 r3rl.reporting.run: a run folder that cannot be reported on
      VerifierError(RuntimeError)   r3rl.environment.scoring (also r3rl.environment.rollout): a task's verifier raised too often
"""

from __future__ import annotations

import os

__all__ = ["R3RLError", "InputError", "DamagedFileError", "RenamedConfigWarning", "hub_error_hint"]


class R3RLError(Exception):
    """An error the user can fix; its message is one sentence naming the file, field or row."""


class InputError(R3RLError, ValueError):
    """A value, option, argument or file the user gave is wrong."""


class DamagedFileError(InputError):
    """A file r3rl reads is truncated or garbled; the message names it."""


class RenamedConfigWarning(FutureWarning):
    """An old config key or value, still accepted; the command line prints it as one line (r3rl/cli.py)."""


def hub_error_hint(name: str, kind: str, error: BaseException) -> str:
    """One sentence about a model or dataset id that could not be loaded, and what to do."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    text = str(error).lower()
    if "gated" in text or "401" in text or "403" in text or "access" in text and "restricted" in text:
        fix = "it is gated or private: accept its terms on the Hub and run `huggingface-cli login`"
    elif offline:
        fix = ("HF_HUB_OFFLINE=1 is set and it is not in the local cache: give a local folder, "
               "or download it first on a machine with network")
    else:
        fix = ("it is neither a local folder nor reachable on the Hub: check the spelling, the network, "
               "or give a local folder (set HF_HUB_OFFLINE=1 to skip network retries)")
    return f"cannot load {kind} {name!r}: {fix}."
