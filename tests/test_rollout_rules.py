"""The pure rules of rolling promotions: policy validation, schedules, the step machine,
replica floors and the rollback decision (controller/rollout_rules.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.errors import FailedPrecondition, InvalidArgument
from controller.rollout_rules import (
    Action,
    Figures,
    Mode,
    Policy,
    PolicyLimits,
    Rollout,
    RolloutState,
    Step,
    Thresholds,
    advance,
    answers,
    end,
    floors,
    judge,
    next_action,
    pause,
    replicas_for_share,
    require_active,
    resume,
    schedule,
    validate_policy,
)
from slipway import latency

LIMITS = PolicyLimits()


@pytest.mark.parametrize(
    "policy, reason, words",
    [
        (Policy(max_surge_percent=0), "INVALID_ROLLOUT_POLICY", "max_surge_percent must be between 1 and 100"),
        (Policy(max_surge_percent=101), "INVALID_ROLLOUT_POLICY", "max_surge_percent"),
        (Policy(stabilization_seconds=0.5), "INVALID_ROLLOUT_POLICY", "stabilization_seconds must be between 1"),
        (Policy(stabilization_seconds=float("nan")), "INVALID_ROLLOUT_POLICY", "stabilization_seconds"),
        (Policy(keep_previous_warm_seconds=-1), "INVALID_ROLLOUT_POLICY", "keep_previous_warm_seconds"),
        (
            Policy(thresholds=Thresholds(max_error_rate_increase=1.5)),
            "INVALID_ROLLOUT_POLICY",
            "max_error_rate_increase_points must be between 0 and 100",
        ),
        (Policy(thresholds=Thresholds(max_p99_ratio=0.5)), "INVALID_ROLLOUT_POLICY", "max_p99_ratio"),
        (Policy(thresholds=Thresholds(min_requests=0)), "INVALID_ROLLOUT_POLICY", "min_requests"),
        (Policy(thresholds=Thresholds(latency_floor_seconds=601)), "INVALID_ROLLOUT_POLICY", "latency_floor"),
        (Policy(steps=(Step(50), Step(40), Step(100))), "INVALID_ROLLOUT_STEPS", "step 2 is 40%"),
        (Policy(steps=(Step(0), Step(100))), "INVALID_ROLLOUT_STEPS", "step 1 is 0%"),
        (Policy(steps=(Step(10), Step(50))), "INVALID_ROLLOUT_STEPS", "the last step must be 100%"),
        (Policy(steps=tuple(Step(p) for p in range(1, 101, 4)) + (Step(100),)), "INVALID_ROLLOUT_STEPS", "1 to 20"),
        (Policy(steps=(Step(10, -1), Step(100))), "INVALID_ROLLOUT_POLICY", "steps[0].hold_seconds"),
    ],
)
def test_policies_outside_the_limits_are_refused_precisely(policy, reason, words):
    with pytest.raises(InvalidArgument) as refused:
        validate_policy(policy, LIMITS)
    assert refused.value.reason == reason
    assert words in refused.value.message


@pytest.mark.parametrize(
    "policy",
    [Policy(), Policy(mode=Mode.ROLLING, steps=(Step(10, 5), Step(50), Step(100))), Policy(max_surge_percent=100)],
)
def test_policies_within_the_limits_pass(policy):
    validate_policy(policy, LIMITS)


@pytest.mark.parametrize(
    "policy, expected",
    [
        (Policy(max_surge_percent=25, stabilization_seconds=60), [(25, 60), (50, 60), (75, 60), (100, 60)]),
        (Policy(max_surge_percent=40, stabilization_seconds=5), [(40, 5), (80, 5), (100, 5)]),
        (Policy(max_surge_percent=100), [(100, 60)]),
        (Policy(steps=(Step(10, 2), Step(50), Step(100, 1)), stabilization_seconds=7), [(10, 2), (50, 7), (100, 1)]),
    ],
)
def test_schedule_from_surge_or_explicit_steps(policy, expected):
    assert [(s.percent, s.hold_seconds) for s in schedule(policy)] == expected


def histogram(seconds: float, count: int) -> tuple[int, ...]:
    counts = latency.empty()
    counts[latency.bucket_of(seconds)] = count
    return tuple(counts)


def figures(requests: int, errors: int, seconds: float = 0.005) -> Figures:
    return Figures(requests, errors, histogram(seconds, requests))


T = Thresholds(min_requests=50)


@pytest.mark.parametrize(
    "candidate, previous, thresholds, kind",
    [
        (figures(100, 30), figures(100, 0), T, "error_rate"),  # 30% vs 0%
        (figures(100, 3), figures(100, 0), T, "error_rate"),  # 3% > 0% + 2 points
        (figures(100, 2), figures(100, 0), T, None),  # exactly +2 points: within
        (figures(100, 12), figures(100, 10), T, None),  # +2 points over a failing previous
        (figures(100, 30), figures(10, 0), T, None),  # too few answers from the previous
        (figures(49, 30), figures(100, 0), T, None),  # too few from the candidate
        (figures(100, 0, 0.9), figures(100, 0, 0.2), T, "latency"),  # p99 4x, above the floor
        (figures(100, 0, 0.04), figures(100, 0, 0.004), T, None),  # 10x but under the 250 ms floor
        (figures(100, 0, 0.4), figures(100, 0, 0.3), T, None),  # slower but under 2x
        (figures(100, 0, 0.9), figures(100, 0, 0.2), replace(T, max_p99_ratio=5), None),
        (figures(100, 5), figures(100, 0), replace(T, max_error_rate_increase=0.1), None),
    ],
)
def test_the_rollback_decision(candidate, previous, thresholds, kind):
    breach = judge(candidate, previous, thresholds)
    assert (breach.kind if breach else None) == kind
    if breach:
        assert f"({candidate.errors}/{candidate.requests})" in breach.message  # the figures that triggered it


def test_latency_is_judged_on_the_same_traffic_only_and_errors_against_the_whole_rollout():
    slow, fast = figures(100, 0, 0.9), figures(100, 0, 0.2)
    assert judge(slow, fast, T, same_traffic=False) is None  # at 100% the candidate carries all the load
    assert judge(figures(100, 30), fast, T, same_traffic=False).kind == "error_rate"
    at_100 = rollout(previous_step=figures(5, 0), previous_total=figures(500, 0))
    assert at_100.baseline() == (at_100.previous_total, False)
    at_50 = rollout(previous_step=figures(80, 0), previous_total=figures(500, 0))
    assert at_50.baseline() == (at_50.previous_step, True)


def test_figures_from_a_gateway_report_add_up():
    one = answers((90, 5, 5), histogram(0.01, 100))
    assert (one.requests, one.errors) == (100, 5)
    both = one.plus(answers((10, 0, 0), []))
    assert (both.requests, both.errors, sum(both.buckets)) == (110, 5, 100)
    assert Figures().plus(one) == one and one.plus(Figures()) == one
    assert answers((1, 0, 0), [1, 2]).buckets == ()  # a histogram of another shape is ignored


def rollout(**overrides) -> Rollout:
    values = dict(
        id="ro1",
        model_id="m",
        environment="production",
        candidate_id="cand",
        previous_id="prev",
        state=RolloutState.RELEASING,
        trigger="promotion",
        message="",
        steps=(Step(10, 5), Step(50, 5), Step(100, 5)),
        thresholds=T,
        step_index=-1,
        candidate_percent=0,
        base_replicas=4,
        create_time=0.0,
        update_time=0.0,
        keep_warm_seconds=30.0,
    )
    values.update(overrides)
    return Rollout(**values)


@pytest.mark.parametrize(
    "state, step_index, started, ready, now, action",
    [
        (RolloutState.RELEASING, -1, None, 0, 0, Action.WAIT),  # the candidate must carry 10% of 4 first
        (RolloutState.RELEASING, -1, None, 1, 0, Action.ADVANCE),
        (RolloutState.RAMPING_UP, 0, 0.0, 4, 4.9, Action.WAIT),  # the step is held 5 s
        (RolloutState.RAMPING_UP, 0, 0.0, 1, 5.0, Action.WAIT),  # 50% of 4 needs 2 ready replicas
        (RolloutState.RAMPING_UP, 0, 0.0, 2, 5.0, Action.ADVANCE),
        (RolloutState.RAMPING_UP, 2, 10.0, 4, 15.0, Action.SUCCEED),
        (RolloutState.PAUSED, 0, 0.0, 4, 100.0, Action.WAIT),
        (RolloutState.CANCELED, 0, 0.0, 4, 100.0, Action.WAIT),
    ],
)
def test_the_step_machine(state, step_index, started, ready, now, action):
    r = rollout(state=state, step_index=step_index, step_start_time=started)
    assert next_action(r, ready, 10, now) is action


def test_advance_resets_the_step_figures_and_raises_the_share():
    r = rollout(candidate_step=figures(10, 1), previous_step=figures(90, 0))
    step = advance(r, 7.0)
    assert (step.state, step.step_index, step.candidate_percent, step.step_start_time) == (
        RolloutState.RAMPING_UP,
        0,
        10,
        7.0,
    )
    assert step.candidate_step == Figures() and step.previous_step == Figures()
    assert "10%" in step.message


def test_pause_holds_the_share_and_the_clock_and_resume_continues_it():
    r = rollout(state=RolloutState.RAMPING_UP, step_index=1, candidate_percent=50, step_start_time=100.0)
    paused = pause(r, 103.0)  # 2 s of the 5 s hold left
    assert paused.state is RolloutState.PAUSED and paused.candidate_percent == 50
    assert next_action(paused, 10, 10, 1000.0) is Action.WAIT
    resumed = resume(paused, 500.0)
    assert resumed.state is RolloutState.RAMPING_UP and resumed.step_start_time == pytest.approx(497.0)
    assert next_action(resumed, 10, 10, 501.9) is Action.WAIT
    assert next_action(resumed, 10, 10, 502.0) is Action.ADVANCE
    assert pause(paused, 600.0) is paused and resume(r, 1.0) is r  # idempotent


def test_a_paused_release_resumes_releasing():
    assert resume(pause(rollout(), 1.0), 2.0).state is RolloutState.RELEASING


def test_ends_give_the_traffic_to_one_side():
    r = rollout(state=RolloutState.RAMPING_UP, step_index=1, candidate_percent=50, step_start_time=0.0)
    succeeded = end(r, RolloutState.SUCCEEDED, "schedule", "done", 10.0)
    assert succeeded.candidate_percent == 100 and succeeded.keep_warm_until == 40.0 and not succeeded.active
    for state in (RolloutState.CANCELED, RolloutState.ROLLED_BACK, RolloutState.FAILED):
        ended = end(r, state, "user", "why", 10.0)
        assert ended.candidate_percent == 0 and ended.keep_warm_until is None and ended.end_time == 10.0
    with pytest.raises(FailedPrecondition) as refused:
        require_active(succeeded, "m", "production")
    assert refused.value.reason == "NO_ROLLOUT_IN_PROGRESS" and "SUCCEEDED" in refused.value.message


@pytest.mark.parametrize(
    "base, percent, max_replica, expected",
    [(4, 10, 10, 1), (4, 50, 10, 2), (4, 100, 10, 4), (4, 100, 3, 3), (1, 10, 10, 1), (5, 0, 10, 0), (3, 34, 5, 2)],
)
def test_replicas_for_a_share(base, percent, max_replica, expected):
    assert replicas_for_share(base, percent, max_replica) == expected


def test_floors_scale_the_candidate_ahead_and_keep_the_previous_for_its_share():
    releasing = rollout()
    assert floors(releasing, 10, 10, 0.0) == {"cand": 1, "prev": 4}
    at_10 = rollout(state=RolloutState.RAMPING_UP, step_index=0, candidate_percent=10, step_start_time=0.0)
    assert floors(at_10, 10, 10, 0.0) == {"cand": 2, "prev": 4}  # ahead of 50%; 90% of 4 rounds up
    at_100 = replace(at_10, step_index=2, candidate_percent=100)
    assert floors(at_100, 10, 10, 0.0) == {"cand": 4, "prev": 1}  # one warm replica for a rollback
    succeeded = end(at_100, RolloutState.SUCCEEDED, "schedule", "done", 100.0)
    assert floors(succeeded, 10, 10, 129.0) == {"prev": 4}  # kept warm 30 s
    assert floors(succeeded, 10, 10, 130.0) == {}
    assert floors(end(at_10, RolloutState.CANCELED, "user", "", 1.0), 10, 10, 1.0) == {}


def environment(production: str | None = "prev", promoting: str | None = "cand"):
    from controller.environments import Environment

    return Environment("m", "production", production, promoting, None, 0.0, 0.0)


@pytest.mark.parametrize(
    "overrides, promoting, expected",
    [
        ({}, "cand", [("prev", 100)]),  # RELEASING: no traffic on the candidate yet
        ({"state": RolloutState.RAMPING_UP, "candidate_percent": 10}, "cand", [("cand", 10), ("prev", 90)]),
        ({"state": RolloutState.PAUSED, "candidate_percent": 50}, "cand", [("cand", 50), ("prev", 50)]),
        ({"state": RolloutState.RAMPING_UP, "candidate_percent": 100}, "cand", [("cand", 100)]),
        ({"state": RolloutState.RAMPING_UP, "candidate_percent": 50}, None, [("prev", 100)]),  # promotion cancelled
        ({"state": RolloutState.CANCELED, "candidate_percent": 0}, None, [("prev", 100)]),
    ],
)
def test_the_route_lists_the_candidate_first_with_the_rollouts_weights(overrides, promoting, expected):
    from controller.rollout_environments import weighted_deployments

    routed = weighted_deployments(environment(promoting=promoting), rollout(**overrides))
    assert [(d.deployment_id, d.weight) for d in routed] == expected
    assert weighted_deployments(environment(production=None, promoting=None), None) == []


@pytest.mark.parametrize(
    "paths, sent, reason",
    [
        ([], {}, "EMPTY_UPDATE"),
        (["name"], {}, "INVALID_UPDATE_MASK"),
        (["mode"], {"mode": 7}, "INVALID_ROLLOUT_POLICY"),
    ],
)
def test_policy_update_masks_are_checked(paths, sent, reason):
    from google.protobuf import field_mask_pb2

    from controller.rollout_servicer import policy_changes
    from slipway.v1 import rollout_service_pb2 as ro

    request = ro.UpdateRolloutPolicyRequest(
        policy=ro.RolloutPolicy(model_id="m", **sent), update_mask=field_mask_pb2.FieldMask(paths=paths)
    )
    with pytest.raises(InvalidArgument) as refused:
        policy_changes(request)
    assert refused.value.reason == reason


def test_a_policy_update_changes_only_what_it_names():
    from google.protobuf import field_mask_pb2

    from controller.rollout_servicer import policy_changes
    from slipway.v1 import rollout_service_pb2 as ro

    sent = ro.RolloutPolicy(
        model_id="m", mode=ro.ROLLOUT_MODE_ROLLING, min_requests=5, max_error_rate_increase_points=4
    )
    apply, _ = policy_changes(ro.UpdateRolloutPolicyRequest(policy=sent))  # no mask: the non-zero fields
    changed = apply(Policy())
    assert changed.mode is Mode.ROLLING and changed.thresholds.min_requests == 5
    assert changed.thresholds.max_error_rate_increase == pytest.approx(0.04)
    assert changed.stabilization_seconds == Policy().stabilization_seconds
    masked = ro.UpdateRolloutPolicyRequest(
        policy=ro.RolloutPolicy(auto_rollback=False), update_mask=field_mask_pb2.FieldMask(paths=["auto_rollback"])
    )
    assert policy_changes(masked)[0](changed).thresholds.auto_rollback is False  # false needs its mask path
