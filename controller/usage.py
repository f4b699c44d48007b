"""Usage by UTC day: the replica-seconds of each day a deployment ran (pure: intervals in,
days out). Billing reads the same intervals the totals are summed from."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from controller.errors import InvalidArgument

MAX_DAYS = 366
DAY = 86400.0


def check_days(days: int) -> int:
    if not 0 <= days <= MAX_DAYS:
        raise InvalidArgument("INVALID_USAGE_DAYS", f"days must be between 0 and {MAX_DAYS}, not {days}")
    return days


def first_day(days: int, now: float) -> float:
    """The start (epoch seconds) of the oldest of the last `days` UTC days, today included."""
    today = (now // DAY) * DAY
    return today - (days - 1) * DAY


def by_day(intervals: Iterable[tuple[float, float | None]], since: float, now: float) -> list[tuple[str, float, int]]:
    """(date, replica-seconds, replica starts) per UTC day from `since` (a day's start) to
    `now`, for replicas that ran [start, stop) (stop None: still running); oldest first."""
    seconds: dict[float, float] = {}
    starts: dict[float, int] = {}
    for start, stop in intervals:
        end = min(stop if stop is not None else now, now)
        if start >= since:
            day = (start // DAY) * DAY
            starts[day] = starts.get(day, 0) + 1
        cursor = max(start, since)
        while cursor < end:
            day = (cursor // DAY) * DAY
            until = min(day + DAY, end)
            seconds[day] = seconds.get(day, 0.0) + until - cursor
            cursor = until
    return [
        (
            datetime.datetime.fromtimestamp(day, datetime.UTC).date().isoformat(),
            seconds.get(day, 0.0),
            starts.get(day, 0),
        )
        for day in sorted(seconds.keys() | starts.keys())
    ]
