"""Seeds derived from their parts, the same on every machine and process.

Mining, evaluation and training seed each unit of work (a chunk, a micro-batch, a stage) from
(seed, what, which), never from the rank or from what ran before, so 1 or N processes and a resumed
run sample alike.
"""

from __future__ import annotations

import zlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (seed, step, stage name, ...), same on every machine."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF
