"""Reflection diagnostics from the texts alone: length, diversity, repetition, and whether repeats help.

Made for a training step's few hundred reflections (and an evaluation's): one pass over the
words, pure Python, a few milliseconds. A policy collapsing onto one template shows as falling
distinct-n ratios, a rising duplicate share and one text topping `most_repeated`.

Definitions (all over one set of reflections):
- length: tokens when token ids are given, else whitespace-separated words; min, median (the
  mean of the two middle values for an even count), p90 (nearest rank: the smallest length
  that at least 90% of the reflections do not exceed), max, mean, and a histogram over fixed
  edges, so that histograms of different steps line up.
- distinct-n (Li et al., 2016): distinct word n-grams / all word n-grams, pooled over the set;
  words are lower-cased and split on whitespace. 1.0 = no n-gram repeats anywhere.
- duplicates: texts are the same after lower-casing and collapsing whitespace.
  duplicate_share = 1 - distinct texts / texts (the share that copies another one: n identical
  texts give (n - 1) / n); repeated_share = the share of texts whose normalised form occurs
  more than once (the copies and their originals).
- retry success of repeated vs unique reflections, when each reflection's retry outcome is given.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from r3rl.evaluation.stats import wilson_interval

__all__ = ["LENGTH_EDGES", "normalize", "length_summary", "distinct_n", "duplicates", "reflection_diagnostics",
           "record_diagnostics"]

#: histogram bin edges: bin i holds lengths in [edges[i], edges[i + 1]); the last is open-ended
LENGTH_EDGES = (0, 8, 16, 32, 64, 128, 256, 512, 1024)
MAX_SHOWN_CHARS = 200  # a repeated reflection is quoted up to this long


def normalize(text: str) -> str:
    """The form two reflections are compared in: lower case, runs of whitespace as one space, stripped."""
    return " ".join(text.lower().split())


def _percentile_nearest_rank(sorted_values: Sequence[int], q: float) -> int:
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def length_summary(lengths: Sequence[int], edges: Sequence[int] = LENGTH_EDGES) -> dict[str, Any]:
    """min / median / p90 / max / mean of the lengths and their histogram over `edges`."""
    counts = [0] * len(edges)
    for n in lengths:
        # bisect by hand: edges are few, and the last bin is open-ended
        i = len(edges) - 1
        while i > 0 and n < edges[i]:
            i -= 1
        counts[i] += 1
    if not lengths:
        return {"n": 0, "min": None, "median": None, "p90": None, "max": None, "mean": None,
                "histogram": {"edges": list(edges), "counts": counts}}
    ordered = sorted(lengths)
    return {"n": len(ordered), "min": ordered[0], "median": statistics.median(ordered),
            "p90": _percentile_nearest_rank(ordered, 0.9), "max": ordered[-1], "mean": sum(ordered) / len(ordered),
            "histogram": {"edges": list(edges), "counts": counts}}


def distinct_n(word_lists: Iterable[Sequence[str]], n: int) -> float | None:
    """Distinct n-grams / all n-grams over the lists (None when there is no n-gram at all)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for words in word_lists:
        grams = list(zip(*(words[i:] for i in range(n))))  # the n-grams in one C-level pass
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


def duplicates(texts: Sequence[str], top: int = 5) -> dict[str, Any]:
    """distinct texts, duplicate_share, repeated_share and the `top` most repeated texts with their counts."""
    norms = [normalize(t) for t in texts]
    counts = Counter(norms)
    first_seen: dict[str, str] = {}
    for text, norm in zip(texts, norms):
        first_seen.setdefault(norm, text)
    n = len(texts)
    repeated = sorted((norm for norm, c in counts.items() if c > 1), key=lambda k: (-counts[k], k))[:top]
    return {
        "distinct": len(counts),
        "duplicate_share": 1 - len(counts) / n if n else 0.0,
        "repeated_share": sum(c for c in counts.values() if c > 1) / n if n else 0.0,
        "most_repeated": [{"count": counts[k], "text": first_seen[k][:MAX_SHOWN_CHARS]} for k in repeated],
    }


def _success(oks: list[bool]) -> dict[str, Any]:
    passes = sum(oks)
    return {"n": len(oks), "passes": passes, "rate": passes / len(oks) if oks else None,
            "ci": list(wilson_interval(passes, len(oks)))}


def reflection_diagnostics(texts: Sequence[str], retry_ok: Sequence[bool] | None = None,
                           token_ids: Sequence[Sequence[int]] | None = None, top: int = 5) -> dict[str, Any]:
    """Length, diversity and repetition of a set of reflections; with `retry_ok`, the retry success of
    the repeated reflections vs the unique ones (Wilson intervals; reflections of one step are not
    independent trials, so read them as a description, not a test).

    `token_ids[i]` (optional) are reflection i's generated ids: lengths are then counted in tokens.
    Returns a JSON-serialisable dict: {"n", "length": {"unit", ...length_summary}, "distinct_1",
    "distinct_2", "distinct_3", "distinct", "duplicate_share", "repeated_share", "most_repeated",
    "retry_success": {"repeated", "unique"} or None}.
    """
    if retry_ok is not None and len(retry_ok) != len(texts):
        raise ValueError(f"{len(texts)} reflections but {len(retry_ok)} retry outcomes")
    if token_ids is not None and len(token_ids) != len(texts):
        raise ValueError(f"{len(texts)} reflections but {len(token_ids)} token id lists")
    words = [t.lower().split() for t in texts]
    if token_ids is not None:
        length = {"unit": "tokens", **length_summary([len(ids) for ids in token_ids])}
    else:
        length = {"unit": "words", **length_summary([len(w) for w in words])}
    out: dict[str, Any] = {"n": len(texts), "length": length}
    for n in (1, 2, 3):
        out[f"distinct_{n}"] = distinct_n(words, n)
    out.update(duplicates(texts, top=top))
    out["retry_success"] = None
    if retry_ok is not None:
        counts = Counter(normalize(t) for t in texts)
        repeated = [bool(ok) for t, ok in zip(texts, retry_ok) if counts[normalize(t)] > 1]
        unique = [bool(ok) for t, ok in zip(texts, retry_ok) if counts[normalize(t)] == 1]
        out["retry_success"] = {"repeated": _success(repeated), "unique": _success(unique)}
    return out


def record_diagnostics(records: Iterable[Mapping[str, Any]], top: int = 5) -> dict[str, Any]:
    """`reflection_diagnostics` of an evaluation: the reflections of the failed first attempts
    (records with a "reflection_text"), with their retries' outcomes."""
    rows = [r for r in records if not r.get("attempt_ok") and r.get("reflection_text") is not None]
    return reflection_diagnostics([str(r["reflection_text"]) for r in rows],
                                  retry_ok=[bool(r.get("retry_ok")) for r in rows], top=top)
