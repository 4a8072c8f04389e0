"""Summaries of samples: percentiles (nearest rank) and rates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of already sorted values (NaN if empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_ms(seconds: Iterable[float]) -> dict[str, float | int | None]:
    """count, p50, p99 and max of latencies given in seconds, as milliseconds (None if no samples)."""
    values = sorted(seconds)
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "max_ms": round(values[-1] * 1000, 3),
    }


def rate(times: Iterable[float], start: float, end: float) -> float:
    """Events per second among ``times`` that fall within [start, end)."""
    span = end - start
    if span <= 0:
        return 0.0
    return sum(1 for t in times if start <= t < end) / span
