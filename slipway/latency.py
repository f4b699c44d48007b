"""The fixed latency buckets gateways report answers in (DeploymentLoad.latency_bucket_counts),
and quantiles read back from such a histogram (pure: the gateway, the controller's metric
history and automatic rollback share it)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Upper bounds in seconds (an answer of exactly a bound falls in that bound's bucket); one
# more bucket takes slower answers. Requests may last 600 s.
BOUNDS_SECONDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
BUCKETS = len(BOUNDS_SECONDS) + 1


def bucket_of(seconds: float) -> int:
    return bisect.bisect_left(BOUNDS_SECONDS, seconds)


def empty() -> list[int]:
    return [0] * BUCKETS


def add_into(total: list[int], counts: Sequence[int]) -> None:
    """Adds a histogram of the same buckets into `total` (a histogram of another length
    is ignored by the caller, not here)."""
    for index, count in enumerate(counts):
        total[index] += count


def quantile(counts: Sequence[int], q: float) -> float:
    """The q-quantile (0 < q ≤ 1) of a histogram, interpolated linearly within its bucket
    (the slowest bucket has no upper bound: its lower bound is answered); 0 when empty."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = BOUNDS_SECONDS[index - 1] if index > 0 else 0.0
            if index >= len(BOUNDS_SECONDS):
                return lower
            return lower + (BOUNDS_SECONDS[index] - lower) * (rank - seen) / count
        seen += count
    return BOUNDS_SECONDS[-1]
