"""Rolling promotions and automatic rollback: the rules (pure: no I/O, time from the caller).

A rollout moves one environment of a model from its previous deployment to a candidate
in steps: RELEASING (the candidate is scaled to carry the first step; no traffic yet) →
RAMPING_UP through each step's share, each held for its duration → SUCCEEDED. It can be
PAUSED (the share and the step's clock are held), CANCELED (traffic returns to the
previous deployment), completed by force (SUCCEEDED at once), or end FAILED (the
candidate cannot serve) or ROLLED_BACK (a breach of the thresholds, or a caller's
rollback). Before a share rises, the candidate's ready replicas must cover it.

Each step's figures of the candidate are compared with the previous deployment's on the
same traffic (the step's, or the whole rollout's when the step gave the previous too few
answers, as at 100%): a breach is an error rate above the previous one's by more than
`max_error_rate_increase` (a fraction), or — on the same traffic only — a p99 above
`max_p99_ratio` times the previous one's and above `latency_floor_seconds`, once each has
`min_requests` answers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from controller.errors import FailedPrecondition, InvalidArgument
from slipway import latency


class RolloutState(enum.StrEnum):
    RELEASING = "RELEASING"
    RAMPING_UP = "RAMPING_UP"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    ROLLED_BACK = "ROLLED_BACK"


ACTIVE_STATES = frozenset({RolloutState.RELEASING, RolloutState.RAMPING_UP, RolloutState.PAUSED})


class Mode(enum.StrEnum):
    IMMEDIATE = "immediate"
    ROLLING = "rolling"


@dataclass(frozen=True)
class Step:
    percent: int
    hold_seconds: float = 0.0  # 0: the policy's stabilization_seconds


@dataclass(frozen=True)
class Thresholds:
    auto_rollback: bool = True
    max_error_rate_increase: float = 0.02  # 2 percentage points
    max_p99_ratio: float = 2.0
    latency_floor_seconds: float = 0.25
    min_requests: int = 100


@dataclass(frozen=True)
class Policy:
    mode: Mode = Mode.IMMEDIATE
    max_surge_percent: int = 25
    stabilization_seconds: float = 60.0
    steps: tuple[Step, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    keep_previous_warm_seconds: float = 300.0


# An environment without a stored policy: promotions switch at once, nothing is kept warm
# (exactly the platform before rolling promotions).
UNSET_POLICY = Policy(keep_previous_warm_seconds=0.0)


@dataclass(frozen=True)
class PolicyLimits:
    """Allowed ranges (inclusive): operator configuration."""

    max_surge_percent: tuple[int, int] = (1, 100)
    stabilization_seconds: tuple[float, float] = (1.0, 86_400.0)
    steps: tuple[int, int] = (1, 20)
    hold_seconds: tuple[float, float] = (0.0, 86_400.0)
    max_error_rate_increase: tuple[float, float] = (0.0, 1.0)
    max_p99_ratio: tuple[float, float] = (1.0, 100.0)
    latency_floor_seconds: tuple[float, float] = (0.0, 600.0)
    min_requests: tuple[int, int] = (1, 1_000_000)
    keep_previous_warm_seconds: tuple[float, float] = (0.0, 86_400.0)


def _check_range(name: str, value: float, bounds: tuple[float, float], unit: str = "") -> None:
    low, high = bounds
    if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
        raise InvalidArgument(
            "INVALID_ROLLOUT_POLICY",
            f"{name} must be between {low:g} and {high:g}{unit} (got {value:g})",
            field=name,
        )


def validate_policy(policy: Policy, limits: PolicyLimits) -> None:
    """Refuses a policy outside the limits, naming the field and the allowed range."""
    _check_range("max_surge_percent", policy.max_surge_percent, limits.max_surge_percent)
    _check_range("stabilization_seconds", policy.stabilization_seconds, limits.stabilization_seconds, " s")
    _check_range(
        "keep_previous_warm_seconds", policy.keep_previous_warm_seconds, limits.keep_previous_warm_seconds, " s"
    )
    t = policy.thresholds
    low, high = limits.max_error_rate_increase
    _check_range("max_error_rate_increase_points", t.max_error_rate_increase * 100, (low * 100, high * 100))
    _check_range("max_p99_ratio", t.max_p99_ratio, limits.max_p99_ratio)
    _check_range("latency_floor_seconds", t.latency_floor_seconds, limits.latency_floor_seconds, " s")
    _check_range("min_requests", t.min_requests, limits.min_requests)
    if policy.steps:
        low_steps, high_steps = limits.steps
        if not low_steps <= len(policy.steps) <= high_steps:
            raise InvalidArgument(
                "INVALID_ROLLOUT_STEPS",
                f"a rollout has {low_steps} to {high_steps} steps (got {len(policy.steps)})",
                field="steps",
            )
        previous = 0
        for index, step in enumerate(policy.steps):
            if not previous < step.percent <= 100:
                raise InvalidArgument(
                    "INVALID_ROLLOUT_STEPS",
                    f"step {index + 1} is {step.percent}%: steps must rise strictly, each within 1..100 "
                    f"(after {previous}%)",
                    field="steps",
                )
            _check_range(f"steps[{index}].hold_seconds", step.hold_seconds, limits.hold_seconds, " s")
            previous = step.percent
        if previous != 100:
            raise InvalidArgument(
                "INVALID_ROLLOUT_STEPS", f"the last step must be 100% (got {previous}%)", field="steps"
            )


def schedule(policy: Policy) -> tuple[Step, ...]:
    """The steps a rollout under `policy` goes through, each with its hold time."""
    hold = policy.stabilization_seconds
    if policy.steps:
        return tuple(Step(s.percent, s.hold_seconds or hold) for s in policy.steps)
    surge = max(1, min(policy.max_surge_percent, 100))
    percents = list(range(surge, 100, surge)) + [100]
    return tuple(Step(p, hold) for p in percents)


# --- figures and the rollback decision ---------------------------------------------


@dataclass(frozen=True)
class Figures:
    """One deployment's answers over a stretch: count, errors (5xx) and a latency histogram."""

    requests: int = 0
    errors: int = 0
    buckets: tuple[int, ...] = ()

    def plus(self, other: Figures) -> Figures:
        if not other.requests and not any(other.buckets):
            return self
        if not self.buckets:
            buckets = other.buckets
        elif not other.buckets:
            buckets = self.buckets
        else:
            buckets = tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True))
        return Figures(self.requests + other.requests, self.errors + other.errors, buckets)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99(self) -> float:
        return latency.quantile(self.buckets, 0.99) if self.buckets else 0.0

    def describe(self) -> str:
        return f"{self.error_rate * 100:.1f}% errors ({self.errors}/{self.requests}), p99 {self.p99 * 1000:.0f} ms"


def answers(responses: Sequence[int], buckets: Sequence[int]) -> Figures:
    """Figures from a gateway's report: (2xx, 4xx, 5xx) counts and a histogram of latency.BUCKETS."""
    counts = [max(int(c), 0) for c in responses]
    histogram = tuple(max(int(c), 0) for c in buckets) if len(buckets) == latency.BUCKETS else ()
    return Figures(sum(counts), counts[2] if len(counts) > 2 else 0, histogram)


@dataclass(frozen=True)
class Breach:
    kind: str  # "error_rate" or "latency"
    message: str


def judge(candidate: Figures, previous: Figures, thresholds: Thresholds, same_traffic: bool = True) -> Breach | None:
    """A breach of the thresholds by the candidate compared with the previous deployment;
    None while either has fewer than min_requests answers, or when within them. Latency is
    compared only on the same traffic (`same_traffic`: both served the step): a candidate
    carrying all of it (at 100%) is slower under more load, not worse."""
    if candidate.requests < thresholds.min_requests or previous.requests < thresholds.min_requests:
        return None
    figures = f"candidate {candidate.describe()}; previous {previous.describe()}"
    allowed = previous.error_rate + thresholds.max_error_rate_increase
    if candidate.error_rate > allowed + 1e-12:
        return Breach(
            "error_rate",
            f"error rate {candidate.error_rate * 100:.1f}% above the previous deployment's "
            f"{previous.error_rate * 100:.1f}% + {thresholds.max_error_rate_increase * 100:g} points ({figures})",
        )
    p99, baseline = candidate.p99, previous.p99
    if same_traffic and p99 > thresholds.latency_floor_seconds and p99 > baseline * thresholds.max_p99_ratio:
        return Breach(
            "latency",
            f"p99 {p99 * 1000:.0f} ms above {thresholds.max_p99_ratio:g} x the previous deployment's "
            f"{baseline * 1000:.0f} ms ({figures})",
        )
    return None


# --- the rollout record and its steps ----------------------------------------------


@dataclass(frozen=True)
class Rollout:
    id: str
    model_id: str
    environment: str
    candidate_id: str
    previous_id: str
    state: RolloutState
    trigger: str
    message: str
    steps: tuple[Step, ...]
    thresholds: Thresholds
    step_index: int  # -1 while RELEASING
    candidate_percent: int
    base_replicas: int  # the previous deployment's replicas when the rollout began
    create_time: float
    update_time: float
    step_start_time: float | None = None
    paused_remaining: float | None = None  # a paused step's hold time still to go
    candidate_step: Figures = Figures()
    previous_step: Figures = Figures()
    previous_total: Figures = Figures()
    end_time: float | None = None
    keep_warm_seconds: float = 0.0
    keep_warm_until: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def last_step(self) -> bool:
        return self.step_index == len(self.steps) - 1

    def baseline(self) -> tuple[Figures, bool]:
        """The previous deployment's figures the candidate's step is compared with, and
        whether they are of the same traffic (the step's) rather than the whole rollout's."""
        if self.previous_step.requests >= self.thresholds.min_requests:
            return self.previous_step, True
        return self.previous_total, False


def replicas_for_share(base_replicas: int, percent: int, max_replica: int) -> int:
    """Replicas a deployment needs to carry `percent` of what `base_replicas` carried (at
    least one for any share, at most its max_replica)."""
    if percent <= 0:
        return 0
    return max(1, min(math.ceil(base_replicas * percent / 100), max(max_replica, 1)))


class Action(enum.StrEnum):
    WAIT = "wait"
    ADVANCE = "advance"  # to the next step (from RELEASING: the first)
    SUCCEED = "succeed"


def next_share(rollout: Rollout) -> int:
    """The share the candidate carries next (the current one at the last step)."""
    index = min(rollout.step_index + 1, len(rollout.steps) - 1)
    return rollout.steps[index].percent


def next_action(rollout: Rollout, candidate_ready: int, candidate_max_replica: int, now: float) -> Action:
    """What the schedule asks of an active rollout now: hold, raise the share (once the
    candidate's ready replicas cover the next one), or succeed after the last step."""
    if rollout.state is RolloutState.PAUSED or not rollout.active:
        return Action.WAIT
    if rollout.step_index >= 0:
        assert rollout.step_start_time is not None
        if now - rollout.step_start_time < rollout.steps[rollout.step_index].hold_seconds:
            return Action.WAIT
        if rollout.last_step:
            return Action.SUCCEED
    needed = replicas_for_share(rollout.base_replicas, next_share(rollout), candidate_max_replica)
    return Action.ADVANCE if candidate_ready >= needed else Action.WAIT


def advance(rollout: Rollout, now: float) -> Rollout:
    index = rollout.step_index + 1
    return replace(
        rollout,
        state=RolloutState.RAMPING_UP,
        trigger="schedule",
        step_index=index,
        candidate_percent=rollout.steps[index].percent,
        step_start_time=now,
        candidate_step=Figures(),
        previous_step=Figures(),
        message=f"step {index + 1}/{len(rollout.steps)}: the candidate takes {rollout.steps[index].percent}% "
        f"of the traffic for {rollout.steps[index].hold_seconds:g} s",
        update_time=now,
    )


def end(rollout: Rollout, state: RolloutState, trigger: str, message: str, now: float) -> Rollout:
    """The rollout ended: SUCCEEDED gives the candidate all traffic (and keeps the previous
    warm); any other end gives it back to the previous deployment."""
    assert state not in ACTIVE_STATES
    succeeded = state is RolloutState.SUCCEEDED
    return replace(
        rollout,
        state=state,
        trigger=trigger,
        message=message,
        candidate_percent=100 if succeeded else 0,
        end_time=now,
        update_time=now,
        paused_remaining=None,
        keep_warm_until=now + rollout.keep_warm_seconds if succeeded and rollout.keep_warm_seconds else None,
    )


def require_active(rollout: Rollout | None, model_id: str, environment: str) -> Rollout:
    if rollout is None or not rollout.active:
        last = f" (the latest one, {rollout.id}, is {rollout.state.value})" if rollout is not None else ""
        raise FailedPrecondition(
            "NO_ROLLOUT_IN_PROGRESS",
            f"model {model_id} has no rollout in progress in {environment}{last}",
            model_id=model_id,
        )
    return rollout


def pause(rollout: Rollout, now: float) -> Rollout:
    if rollout.state is RolloutState.PAUSED:
        return rollout
    remaining = None
    if rollout.step_index >= 0 and rollout.step_start_time is not None:
        remaining = max(rollout.steps[rollout.step_index].hold_seconds - (now - rollout.step_start_time), 0.0)
    return replace(
        rollout,
        state=RolloutState.PAUSED,
        trigger="user",
        paused_remaining=remaining,
        message=f"paused with the candidate at {rollout.candidate_percent}% of the traffic",
        update_time=now,
    )


def resume(rollout: Rollout, now: float) -> Rollout:
    if rollout.state is not RolloutState.PAUSED:
        return rollout
    if rollout.step_index < 0:
        return replace(rollout, state=RolloutState.RELEASING, trigger="user", message="resumed", update_time=now)
    hold = rollout.steps[rollout.step_index].hold_seconds
    remaining = rollout.paused_remaining if rollout.paused_remaining is not None else hold
    return replace(
        rollout,
        state=RolloutState.RAMPING_UP,
        trigger="user",
        step_start_time=now - (hold - remaining),
        paused_remaining=None,
        message=f"resumed at {rollout.candidate_percent}% ({remaining:.0f} s of step {rollout.step_index + 1} left)",
        update_time=now,
    )


def floors(rollout: Rollout, previous_max: int, candidate_max: int, now: float) -> dict[str, int]:
    """Replicas each deployment keeps whatever its autoscaler says: an active rollout's
    candidate is scaled ahead of its next share and its previous deployment keeps what its
    share needs (one replica at least, for an instant rollback); after a success the
    previous keeps its replicas until keep_warm_until."""
    if rollout.active:
        previous_share = max(100 - rollout.candidate_percent, 1)
        return {
            rollout.candidate_id: replicas_for_share(rollout.base_replicas, next_share(rollout), candidate_max),
            rollout.previous_id: replicas_for_share(rollout.base_replicas, previous_share, previous_max),
        }
    if rollout.state is RolloutState.SUCCEEDED and rollout.keep_warm_until and now < rollout.keep_warm_until:
        return {rollout.previous_id: min(rollout.base_replicas, max(previous_max, 1))}
    return {}
