"""The autoscaler's decisions as a pure function of load samples and time."""

from __future__ import annotations

from controller.autoscaler import AutoscalerConfig, ScalerState, next_target, replicas_for
from controller.domain import AutoscalingSettings

SETTINGS = AutoscalingSettings(
    min_replica=0,
    max_replica=8,
    autoscaling_window=60,
    scale_down_delay=100,
    concurrency_target=1,
    target_utilization_percentage=100,
)
CONFIG = AutoscalerConfig()


def run(
    state: ScalerState, concurrency: float, start: float, end: float, step: float = 1.0, settings=SETTINGS
) -> list[int]:
    """Feed a constant load sample every `step` seconds; return the targets decided."""
    targets, now = [], start
    while now < end:
        state.samples.append((now, concurrency))
        if concurrency > 0:
            state.last_activity = now
        targets.append(next_target(state, settings, CONFIG, now))
        now += step
    return targets


def test_desired_is_load_over_target_times_utilization():
    assert replicas_for(7, AutoscalingSettings(concurrency_target=1, target_utilization_percentage=70)) == 10
    assert replicas_for(4, AutoscalingSettings(concurrency_target=2, target_utilization_percentage=100)) == 2
    assert replicas_for(0, AutoscalingSettings()) == 0


def test_a_burst_scales_up_at_once_through_the_panic_window():
    state = ScalerState(target=1)
    run(state, 0, 0, 50)
    # A burst of 6 concurrent requests: within the 6 s panic window the target reaches 6, while the
    # 60 s window alone would still ask for 1.
    assert run(state, 6, 50, 56)[-1] == 6


def test_scale_up_is_clamped_to_max_replica():
    state = ScalerState(target=1)
    assert run(state, 20, 0, 3)[-1] == 8


def test_scale_down_waits_the_delay_then_halves_the_excess_each_step():
    state = ScalerState(target=8)
    targets = run(state, 0, 0, 450)
    changes = [(t, v) for t, (prev, v) in enumerate(zip([8] + targets, targets, strict=False)) if v != prev]
    assert [v for _, v in changes] == [4, 2, 1, 0]
    assert changes[0][0] >= 100  # nothing before scale_down_delay
    assert all(b - a >= 100 for (a, _), (b, _) in zip(changes, changes[1:], strict=False))


def test_min_replica_is_a_floor_and_no_scale_to_zero_with_it():
    state = ScalerState(target=3)
    settings = AutoscalingSettings(
        min_replica=2,
        max_replica=8,
        autoscaling_window=60,
        scale_down_delay=10,
        concurrency_target=1,
        target_utilization_percentage=100,
    )
    assert run(state, 0, 0, 200, settings=settings)[-1] == 2


def test_load_that_comes_and_goes_does_not_flap():
    state = ScalerState(target=1)
    targets = []
    for second in range(300):
        concurrency = 3 if (second // 20) % 2 == 0 else 1  # 20 s busy, 20 s quieter, repeatedly
        state.samples.append((second, concurrency))
        state.last_activity = second
        targets.append(next_target(state, SETTINGS, CONFIG, second))
    first_rise = next(i for i, t in enumerate(targets) if t > 1)
    assert len(set(targets[first_rise:])) == 1, targets  # dips shorter than scale_down_delay change nothing


def test_time_scale_shrinks_every_duration():
    state = ScalerState(target=2)
    fast = AutoscalerConfig(time_scale=0.01)
    now, targets = 0.0, []
    while now < 3:
        state.samples.append((now, 0))
        targets.append(next_target(state, SETTINGS, fast, now))
        now += 0.05
    assert targets[-1] == 0


def test_no_scale_down_during_a_panic_even_without_a_delay():
    state = ScalerState(target=1)
    no_delay = AutoscalingSettings(
        min_replica=0,
        max_replica=8,
        autoscaling_window=60,
        scale_down_delay=0,
        concurrency_target=1,
        target_utilization_percentage=100,
    )
    run(state, 0, 0, 50, settings=no_delay)
    targets = run(state, 6, 50, 80, settings=no_delay)  # a steady burst: panic, then the stable window catches up
    reached = targets.index(6)
    assert targets[reached:] == [6] * (len(targets) - reached), targets


def test_a_deployment_coming_up_keeps_one_replica_and_its_delay_starts_when_up():
    from controller.autoscaler import Autoscaler

    autoscaler = Autoscaler(CONFIG)
    no_delay = AutoscalingSettings(
        min_replica=0,
        max_replica=1,
        autoscaling_window=60,
        scale_down_delay=0,
        concurrency_target=1,
        target_utilization_percentage=100,
    )
    assert [autoscaler.target("d", no_delay, 0, 0, now, coming_up=True) for now in range(5)] == [1] * 5
    assert autoscaler.target("d", no_delay, 0, 0, 5) == 0  # up (it has served), idle, no delay: to zero


def test_a_restarted_controller_resumes_the_recorded_targets():
    from controller.autoscaler import Autoscaler

    autoscaler = Autoscaler(CONFIG)
    assert autoscaler.target("scaled-up", SETTINGS, 0, 0, 0.0, resume_from=3) == 3  # not cut to one
    assert autoscaler.target("asleep", SETTINGS, 0, 0, 0.0, resume_from=0) == 0  # not woken
    assert autoscaler.target("new", SETTINGS, 0, 0, 0.0) == 1


def test_the_average_weighs_time_not_the_number_of_samples():
    from collections import deque

    from controller.autoscaler import _average

    quiet = [(float(t), 0.0) for t in range(0, 60, 10)]  # one report every 10 s of a quiet minute...
    busy = [(59 + i / 100, 4.0) for i in range(100)]  # ...then many reconcile passes in its last second
    assert _average(deque(quiet + busy), since=0.0) < 1.0  # a plain mean of the samples says 3.6
