"""The short history of each deployment's figures that the dashboard charts (and automatic
rollback compares), kept in the controller's memory: no Prometheus server needed.

Gateways report answers by status class and a latency histogram with every load report;
the reconciler reports, on each pass, the replicas ready and desired and the in-flight
load it sees. Samples are summed over gateways into slots of `resolution_seconds` (the
last hour, `fine_slots` of them) and merged into slots of `coarse_seconds` (24 hours).
Memory is bounded: at most `max_deployments` deployments, each with at most
fine_slots + coarse_slots samples of fixed size. Pure (no I/O); time comes from the caller.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from slipway import latency


@dataclass
class HistorySettings:
    resolution_seconds: float = 10.0
    fine_slots: int = 360  # one hour at 10 s
    coarse_seconds: float = 300.0
    coarse_slots: int = 288  # 24 hours at 5 min
    # Deployments with a history. When full, the one updated longest ago is forgotten if it
    # has had no figure for `fine_span` (a deleted or idle one); otherwise a new deployment
    # gets no history until room is made (a full table never churns).
    max_deployments: int = 1000
    max_points: int = 1000

    @property
    def fine_span(self) -> float:
        return self.resolution_seconds * self.fine_slots

    @property
    def retention(self) -> float:
        return self.coarse_seconds * self.coarse_slots


@dataclass(slots=True)
class Sample:
    """One slot's figures (summed answers, averaged in-flight, the latest replica counts)."""

    start: float
    width: float
    responses: list[int] = field(default_factory=lambda: [0, 0, 0])  # 2xx, 4xx, 5xx
    buckets: list[int] | None = None  # latency histogram; None while nothing was answered
    in_flight_sum: float = 0.0
    in_flight_readings: int = 0
    ready: int = 0
    desired: int = 0
    cold_starts: int = 0

    def merge(self, other: Sample) -> None:
        for index in range(3):
            self.responses[index] += other.responses[index]
        if other.buckets is not None:
            if self.buckets is None:
                self.buckets = latency.empty()
            latency.add_into(self.buckets, other.buckets)
        self.in_flight_sum += other.in_flight_sum
        self.in_flight_readings += other.in_flight_readings
        self.ready, self.desired = other.ready, other.desired  # merged oldest first: the latest wins
        self.cold_starts += other.cold_starts

    @property
    def in_flight(self) -> float:
        return self.in_flight_sum / self.in_flight_readings if self.in_flight_readings else 0.0

    def copy(self, start: float, width: float) -> Sample:
        merged = Sample(start, width)
        merged.merge(self)
        return merged


class DeploymentHistory:
    def __init__(self, settings: HistorySettings) -> None:
        self.settings = settings
        self.fine: deque[Sample] = deque(maxlen=settings.fine_slots)
        self.coarse: deque[Sample] = deque(maxlen=settings.coarse_slots)
        self.current: Sample | None = None
        self.coarse_current: Sample | None = None
        self.last_ready = 0
        self.updated = 0.0

    def slot(self, now: float) -> Sample:
        """The sample `now` falls in (closing the previous one)."""
        resolution = self.settings.resolution_seconds
        start = math.floor(now / resolution) * resolution
        current = self.current
        if current is not None and current.start == start:
            return current
        if current is not None:
            self._close(current)
        self.current = Sample(start, resolution)
        if current is not None:  # gauges carry on until the next reading
            self.current.ready, self.current.desired = current.ready, current.desired
        return self.current

    def _close(self, sample: Sample) -> None:
        self.fine.append(sample)
        coarse = self.settings.coarse_seconds
        start = math.floor(sample.start / coarse) * coarse
        if self.coarse_current is not None and self.coarse_current.start != start:
            self.coarse.append(self.coarse_current)
            self.coarse_current = None
        if self.coarse_current is None:
            self.coarse_current = Sample(start, coarse)
        self.coarse_current.merge(sample)

    def samples(self, since: float, fine: bool) -> list[Sample]:
        if fine:
            chosen: Iterable[Sample] = [*self.fine, *([self.current] if self.current else [])]
        else:
            chosen = [*self.coarse, *([self.coarse_current] if self.coarse_current else [])]
            # The coarse slot still filling has not seen the fine sample still filling.
            if self.current is not None and self.coarse_current is not None:
                live = self.coarse_current.copy(self.coarse_current.start, self.coarse_current.width)
                live.merge(self.current)
                chosen = [*self.coarse, live]
        return [s for s in chosen if s.start + s.width > since]


@dataclass
class Point:
    start: float
    width: float
    responses: tuple[int, int, int]
    buckets: list[int]
    in_flight: float
    ready: int
    desired: int
    cold_starts: int

    def quantile(self, q: float) -> float:
        return latency.quantile(self.buckets, q)

    @property
    def answered(self) -> int:
        return sum(self.responses)

    @property
    def error_rate(self) -> float:
        """Share of answers that were 5xx (0 without answers)."""
        return self.responses[2] / self.answered if self.answered else 0.0


class MetricHistory:
    def __init__(self, settings: HistorySettings | None = None) -> None:
        self.settings = settings or HistorySettings()
        self._deployments: OrderedDict[str, DeploymentHistory] = OrderedDict()

    def __len__(self) -> int:
        return len(self._deployments)

    def _history(self, deployment_id: str, now: float) -> DeploymentHistory | None:
        history = self._deployments.get(deployment_id)
        if history is None:
            if len(self._deployments) >= self.settings.max_deployments:
                oldest_id, oldest = next(iter(self._deployments.items()))
                if oldest.updated > now - self.settings.fine_span:
                    return None
                del self._deployments[oldest_id]
            history = self._deployments[deployment_id] = DeploymentHistory(self.settings)
        else:
            self._deployments.move_to_end(deployment_id)
        history.updated = now
        return history

    def record_answers(self, deployment_id: str, responses: Sequence[int], buckets: Sequence[int], now: float) -> None:
        """One gateway's answers since its previous report (2xx, 4xx, 5xx; a histogram of
        latency.BUCKETS counts, or empty; another length is ignored)."""
        if not any(responses) and not any(buckets):
            return
        history = self._history(deployment_id, now)
        if history is None:
            return
        sample = history.slot(now)
        for index in range(3):
            sample.responses[index] += max(int(responses[index]), 0)
        if len(buckets) == latency.BUCKETS and any(buckets):
            if sample.buckets is None:
                sample.buckets = latency.empty()
            latency.add_into(sample.buckets, [max(int(count), 0) for count in buckets])

    def record_replicas(self, deployment_id: str, desired: int, ready: int, in_flight: float, now: float) -> None:
        """What one reconcile pass saw. A change from no ready replica to some, while
        replicas were wanted, is a cold start."""
        if deployment_id not in self._deployments and not (desired or ready or in_flight):
            return  # an idle deployment with no history costs nothing
        history = self._history(deployment_id, now)
        if history is None:
            return
        sample = history.slot(now)
        if ready > 0 and history.last_ready == 0 and desired > 0:
            sample.cold_starts += 1
        history.last_ready = ready
        sample.ready, sample.desired = ready, desired
        sample.in_flight_sum += in_flight
        sample.in_flight_readings += 1

    def forget(self, deployment_id: str) -> None:
        self._deployments.pop(deployment_id, None)

    def points(self, deployment_id: str, window: float, step: float, now: float) -> tuple[float, list[Point]]:
        """Points of width `step` (rounded up to the resolution used, and widened to at most
        `max_points`) covering the last `window` seconds; returns (step, points)."""
        settings = self.settings
        window = min(max(window, settings.resolution_seconds), settings.retention)
        fine = window <= settings.fine_span
        resolution = settings.resolution_seconds if fine else settings.coarse_seconds
        step = max(step, resolution, window / settings.max_points)
        step = math.ceil(step / resolution - 1e-9) * resolution
        history = self._deployments.get(deployment_id)
        if history is None:
            return step, []
        since = now - window
        bins: dict[float, Sample] = {}
        for sample in history.samples(since, fine):
            start = math.floor(sample.start / step) * step
            merged = bins.get(start)
            if merged is None:
                merged = bins[start] = Sample(start, step)
            merged.merge(sample)
        points = []
        for start in sorted(bins):
            sample = bins[start]
            width = min(step, max(now - start, 0.0))
            points.append(
                Point(
                    start,
                    width,
                    (sample.responses[0], sample.responses[1], sample.responses[2]),
                    sample.buckets or [],
                    sample.in_flight,
                    sample.ready,
                    sample.desired,
                    sample.cold_starts,
                )
            )
        return step, points
