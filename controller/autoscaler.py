"""Replica targets from the load gateways report (DESIGN.md §2 autoscaling).

desired = ceil(average concurrency over the window ÷ (concurrency_target ×
utilization)), clamped to [min_replica, max_replica]. Scale-up is prompt: a short
panic window (a tenth of the window, as Knative does) catches a burst that the
stable window would average away (once it asks for twice the current target, it
drives scale-up for one window, and nothing scales down). Scale-down happens only after the stable desire
has stayed below the target for `scale_down_delay`, and then removes half the
excess; each further halving waits another delay. Reaching zero also needs no
traffic for the delay. Decisions move a remembered target, so noise around a
boundary does not flap replicas.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field

from controller.domain import AutoscalingSettings


@dataclass(frozen=True)
class AutoscalerConfig:
    """Operator configuration."""

    # Multiplies every autoscaling duration (window, scale-down delay): tests use 0.01.
    time_scale: float = 1.0
    panic_window_fraction: float = 0.1
    panic_threshold: float = 2.0
    # Replicas a deployment gets when it is (re)activated, before any load is seen.
    initial_replicas: int = 1
    # A woken deployment keeps at least one replica this long (real seconds), so the requests
    # that woke it are served before gateway load reports could show them.
    wake_hold_seconds: float = 10.0


@dataclass
class ScalerState:
    target: int
    samples: collections.deque = field(default_factory=collections.deque)  # (time, concurrency)
    last_activity: float = 0.0
    requests_seen: int = 0
    below_since: float | None = None
    panic_until: float = 0.0
    hold_until: float = 0.0
    # The deployment's current revision is on its way up: never below one replica, or it
    # would never load; the scale-down delay counts from when it is up.
    coming_up: bool = False


def _average(samples, since: float) -> float:
    """Time-weighted average of the samples since `since`. A sample is a gateway's average
    over the time before it, so it weighs the time since the previous sample: a burst of
    reconcile passes does not outweigh a quiet stretch."""
    total = span = 0.0
    previous = since
    for at, concurrency in samples:
        held = at - max(previous, since)
        previous = at
        if held > 0:
            total, span = total + concurrency * held, span + held
    if span > 0:
        return total / span
    return samples[-1][1] if samples else 0.0


def replicas_for(concurrency: float, settings: AutoscalingSettings) -> int:
    per_replica = settings.concurrency_target * settings.target_utilization_percentage / 100
    return math.ceil(round(concurrency / per_replica, 6))


def next_target(state: ScalerState, settings: AutoscalingSettings, config: AutoscalerConfig, now: float) -> int:
    """Move `state.target` one decision further and return it (pure apart from `state`)."""
    window = settings.autoscaling_window * config.time_scale
    delay = settings.scale_down_delay * config.time_scale
    while state.samples and state.samples[0][0] < now - window:
        state.samples.popleft()
    stable = replicas_for(_average(state.samples, now - window), settings)
    panic = replicas_for(_average(state.samples, now - window * config.panic_window_fraction), settings)
    floor, ceiling = settings.min_replica, settings.max_replica
    if now < state.hold_until or state.coming_up:
        floor = max(floor, 1)
    # As Knative: a burst (the short window asking for twice the target) starts a panic period of
    # one window during which the short window drives scale-up.
    if panic >= config.panic_threshold * max(state.target, 1):
        state.panic_until = now + window
    wanted = min(max(stable, panic if now < state.panic_until else 0, floor), ceiling)
    if wanted > state.target:
        state.target, state.below_since = wanted, None
        return state.target
    desired_down = min(max(stable, floor), ceiling)
    if desired_down >= state.target or now < state.panic_until:  # as Knative: a panic never scales down
        state.below_since = None
        return state.target
    if state.below_since is None:
        state.below_since = now
    idle_long_enough = desired_down > 0 or now - state.last_activity >= delay
    if now - state.below_since >= delay and idle_long_enough:
        state.target -= math.ceil((state.target - desired_down) / 2)
        state.below_since = now
    return state.target


class Autoscaler:
    def __init__(self, config: AutoscalerConfig) -> None:
        self.config = config
        self._states: dict[str, ScalerState] = {}

    def forget(self, deployment_id: str) -> None:
        self._states.pop(deployment_id, None)

    def panicking(self, deployment_id: str, now: float | None = None) -> bool:
        """In a panic period (a burst drives scale-up, nothing scales down)."""
        state = self._states.get(deployment_id)
        return state is not None and (time.monotonic() if now is None else now) < state.panic_until

    def wake(self, deployment_id: str, now: float) -> None:
        state = self._states.get(deployment_id)
        if state is None:
            state = self._states[deployment_id] = ScalerState(target=1)
        state.target = max(state.target, 1)
        state.last_activity, state.below_since = now, None
        state.hold_until = now + self.config.wake_hold_seconds

    def target(
        self,
        deployment_id: str,
        settings: AutoscalingSettings,
        concurrency: float,
        requests_total: int,
        now: float,
        resume_from: int | None = None,
        coming_up: bool = False,
    ) -> int:
        """The deployment's replica target. `resume_from` is the target it had before this
        autoscaler first saw it (a controller restart must neither wake what was scaled to
        zero nor cut what was scaled up); `coming_up` holds it at one replica or more."""
        state = self._states.get(deployment_id)
        if state is None:
            initial = self.config.initial_replicas if resume_from is None else resume_from
            state = self._states[deployment_id] = ScalerState(
                target=min(max(initial, settings.min_replica), settings.max_replica),
                last_activity=now,
                requests_seen=requests_total,
            )
        state.samples.append((now, concurrency))
        if concurrency > 0 or requests_total != state.requests_seen or coming_up:
            state.last_activity, state.requests_seen = now, requests_total
        state.coming_up = coming_up
        return next_target(state, settings, self.config, now)
