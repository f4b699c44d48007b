"""Rolling promotions: what callers do to them (pause, resume, cancel, complete, roll
back, set the policy), and the engine that drives their steps (controller/rollout_rules.py
holds the rules; controller/rollout_environments.py how one starts and what routes list).

A promotion's final step (controller/promotion.py's `finish_promotion`) asks
`rollout_environments.begin_if_rolling`: under a rolling policy the candidate does not become the
environment's deployment yet; a rollout starts instead, and the environment's promotion stays
in flight (so a second promotion into it is refused) until the rollout ends. The route table
(controller/routes.py) lists the environment's two deployments with the rollout's weights.

The engine is leader work: the reconciler runs `tick` at the start of each pass (woken by
every gateway load report), in fenced transactions, so after a restart or a failover the
next leader resumes every rollout where its record says it was. Figures come from the
gateways' load reports (per deployment: answers by class, latency histogram), folded
into the rollout's record each tick; `floor` tells the reconciler the replicas each
deployment keeps whatever its autoscaler says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from controller import domain, environments, promotion
from controller.domain import Deployment, Model
from controller.environments import Environment
from controller.errors import FailedPrecondition, InvalidArgument, NotFound
from controller.leader import LeaseLost
from controller.lookups import require_model
from controller.rollout_environments import require_environment
from controller.rollout_rules import (
    UNSET_POLICY,
    Action,
    Figures,
    Policy,
    PolicyLimits,
    Rollout,
    RolloutState,
    advance,
    answers,
    end,
    floors,
    judge,
    next_action,
    pause,
    require_active,
    resume,
    validate_policy,
)
from controller.store import Page, Store, WriteTx, now
from controller.store.rollout_queries import decode_policy, decode_rollout, encode_policy, encode_rollout
from slipway.v1 import route_service_pb2 as rt

log = logging.getLogger("slipway.rollouts")

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def _fingerprint(method: str, *parts: object) -> str:
    return hashlib.sha256(repr((method, parts)).encode()).hexdigest()


class Rollouts:
    def __init__(
        self,
        store: Store,
        limits: PolicyLimits | None = None,
        on_commit: Callable[[], None] = lambda: None,
        fenced_write: Callable[[], contextlib.AbstractAsyncContextManager[WriteTx]] | None = None,
    ) -> None:
        self.store = store
        self.limits = limits or PolicyLimits()
        self._on_commit = on_commit
        # The engine's transactions: refused unless this controller leads (controller/leader.py).
        self._write = fenced_write or store.write
        self._pending: dict[str, Figures] = {}  # answers reported since the last tick
        self._tracked: set[str] = set()
        self._floors: dict[str, int] = {}

    # --- what the reconciler and the load reports tell the engine -------------------

    def record_report(self, request: rt.ReportLoadRequest) -> None:
        for load in request.loads:
            if load.deployment_id in self._tracked:
                figures = answers(
                    (load.responses_2xx, load.responses_4xx, load.responses_5xx), load.latency_bucket_counts
                )
                self._pending[load.deployment_id] = self._pending.get(load.deployment_id, Figures()).plus(figures)

    def floor(self, deployment_id: str) -> int:
        return self._floors.get(deployment_id, 0)

    async def tick(self) -> None:
        """Drive every rollout in progress one step of its schedule (or end it)."""
        try:
            at = now()
            rollouts = await self.store.rollouts_to_drive(at)
            self._tracked = {d for r in rollouts if r.active for d in (r.candidate_id, r.previous_id)}
            found: dict[str, int] = {}
            for rollout in rollouts:
                if rollout.active:
                    rollout = await self._drive(rollout.id)
                limits = {d.id: d.autoscaling.max_replica for d in await self._deployments(rollout)}
                for deployment_id, count in floors(
                    rollout, limits.get(rollout.previous_id, 1), limits.get(rollout.candidate_id, 1), now()
                ).items():
                    if deployment_id in limits:
                        found[deployment_id] = max(found.get(deployment_id, 0), count)
            self._floors = found
        except LeaseLost:
            raise
        except Exception:  # a failing tick must not stop the reconciler; the next one retries
            log.exception("rollout tick failed")

    async def _deployments(self, rollout: Rollout) -> list[Deployment]:
        found = await self.store.deployments_by_id([rollout.candidate_id, rollout.previous_id])
        return [d for d in found if domain.should_run(d)]

    async def _drive(self, rollout_id: str) -> Rollout:
        async with self._write() as tx:
            rollout = await tx.get_rollout(rollout_id)
            assert rollout is not None
            if not rollout.active:
                return rollout
            at = now()
            candidate_delta = self._pending.pop(rollout.candidate_id, Figures())
            previous_delta = self._pending.pop(rollout.previous_id, Figures())
            updated = replace(rollout, previous_total=rollout.previous_total.plus(previous_delta))
            if rollout.candidate_percent > 0:
                updated = replace(
                    updated,
                    candidate_step=rollout.candidate_step.plus(candidate_delta),
                    previous_step=rollout.previous_step.plus(previous_delta),
                )
            updated = await self._next(tx, updated, at)
            if updated != rollout:
                await tx.update_rollout(updated)
        if updated.state is not rollout.state or updated.step_index != rollout.step_index:
            self._on_commit()
        return updated

    async def _next(self, tx: WriteTx, rollout: Rollout, at: float) -> Rollout:
        model = await tx.get_model(rollout.model_id)
        candidate = await tx.get_deployment(rollout.candidate_id)
        if model is None or model.delete_time is not None:
            return await self._return_traffic(
                tx, rollout, RolloutState.CANCELED, "model_deleted", "the model was deleted", at
            )
        environment = await tx.get_environment(model.id, rollout.environment)
        if environment is None:
            return await self._return_traffic(
                tx, rollout, RolloutState.CANCELED, "environment_deleted", f"{rollout.environment} was deleted", at
            )
        why = _cannot_serve(environment, candidate, rollout)
        if why:
            return await self._return_traffic(tx, rollout, RolloutState.FAILED, "candidate_failed", why, at)
        if rollout.thresholds.auto_rollback and rollout.candidate_percent > 0:
            baseline, same_traffic = rollout.baseline()
            breach = judge(rollout.candidate_step, baseline, rollout.thresholds, same_traffic)
            if breach is not None:
                return await self._return_traffic(
                    tx,
                    rollout,
                    RolloutState.ROLLED_BACK,
                    "automatic",
                    f"automatic rollback at step {rollout.step_index + 1} ({rollout.candidate_percent}%): "
                    f"{breach.message}",
                    at,
                )
        assert candidate is not None
        action = next_action(rollout, candidate.ready_replicas, candidate.autoscaling.max_replica, at)
        if action is Action.ADVANCE:
            advanced = advance(rollout, at)
            await tx.add_event(at, rollout.model_id, rollout.candidate_id, "rollout.step", advanced.message)
            return advanced
        if action is Action.SUCCEED:
            return await self._succeed(tx, model, rollout, "schedule", "every step held: the candidate took over", at)
        return rollout

    async def _succeed(self, tx: WriteTx, model: Model, rollout: Rollout, trigger: str, why: str, at: float) -> Rollout:
        candidate = await tx.get_deployment(rollout.candidate_id)
        assert candidate is not None
        environment = await promotion.require_environment(tx, model, rollout.environment)
        await promotion.point_environment(tx, environment, candidate, at)
        ended = end(rollout, RolloutState.SUCCEEDED, trigger, why, at)
        warm = f"; {rollout.previous_id} kept warm for {rollout.keep_warm_seconds:g} s" if ended.keep_warm_until else ""
        await tx.add_event(at, model.id, candidate.id, "rollout.succeeded", f"{why}{warm}", rollout.environment)
        return replace(ended, message=f"{why}{warm}")

    async def _return_traffic(
        self, tx: WriteTx, rollout: Rollout, state: RolloutState, trigger: str, why: str, at: float
    ) -> Rollout:
        environment = await tx.get_environment(rollout.model_id, rollout.environment)
        if environment is not None and environment.promoting_deployment_id == rollout.candidate_id:
            await tx.update_environment(rollout.model_id, rollout.environment, at, promoting_deployment_id=None)
        message = (
            f"{why}; all traffic is back on {rollout.previous_id}, which stays the {rollout.environment} deployment"
        )
        await tx.add_event(
            at, rollout.model_id, rollout.candidate_id, f"rollout.{state.value.lower()}", message, rollout.environment
        )
        return end(rollout, state, trigger, message, at)

    # --- what callers do --------------------------------------------------------------

    async def _once(
        self,
        method: str,
        request_id: str,
        fingerprint: str,
        body: Callable[[WriteTx, float], Awaitable[str]],
    ) -> str:
        """One transaction; with a request_id, a retry gets the first answer (encoded)."""
        async with self.store.write() as tx:
            if request_id:
                prior = await tx.claim_request(request_id, method, fingerprint, now())
                if prior is not None:
                    if prior[0] != method or (prior[1] and prior[1] != fingerprint):
                        raise InvalidArgument(
                            "REQUEST_ID_REUSED", f"request_id {request_id!r} was already used for another request"
                        )
                    return prior[2]
            encoded = await body(tx, now())
            if request_id:
                await tx.save_request(request_id, encoded)
        self._on_commit()
        return encoded

    async def get(self, model_ref: str, environment: str, rollout_id: str = "") -> Rollout:
        if rollout_id:
            rollout = await self.store.get_rollout(rollout_id)
            if rollout is None:
                raise NotFound("ROLLOUT_NOT_FOUND", f"no rollout {rollout_id[:64]!r}")
            return rollout
        model = await require_model(self.store, model_ref)
        environment = require_environment(environment)
        await promotion.require_environment(self.store, model, environment)
        rollout = await self.store.latest_rollout(model.id, environment)
        if rollout is None:
            raise NotFound(
                "ROLLOUT_NOT_FOUND", f"model {model.id} has had no promotion in {environment} yet", model_id=model.id
            )
        return rollout

    async def list(self, model_ref: str, environment: str, size: int, token: str) -> Page:
        if size < 0:
            raise InvalidArgument("INVALID_PAGE_SIZE", f"page_size must not be negative (got {size})")
        model = await require_model(self.store, model_ref)
        environment = require_environment(environment) if environment else ""
        return await self.store.list_rollouts(
            model.id, environment, min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), token
        )

    async def _act(
        self,
        method: str,
        model_ref: str,
        environment: str,
        request_id: str,
        change: Callable[[WriteTx, Model, Rollout, float], Awaitable[Rollout]],
    ) -> Rollout:
        environment = require_environment(environment)

        async def body(tx: WriteTx, at: float) -> str:
            model = await require_model(tx, model_ref)
            await promotion.require_environment(tx, model, environment)
            active = next((r for r in await tx.active_rollouts([model.id]) if r.environment == environment), None)
            rollout = require_active(active or await tx.latest_rollout(model.id, environment), model.id, environment)
            updated = await change(tx, model, rollout, at)
            if updated != rollout:
                await tx.update_rollout(updated)
            return encode_rollout(updated)

        return decode_rollout(await self._once(method, request_id, _fingerprint(method, model_ref, environment), body))

    async def pause(self, model_ref: str, environment: str, request_id: str) -> Rollout:
        async def change(tx: WriteTx, model: Model, rollout: Rollout, at: float) -> Rollout:
            paused = pause(rollout, at)
            if paused is not rollout:
                await tx.add_event(at, model.id, rollout.candidate_id, "rollout.paused", paused.message)
            return paused

        return await self._act("PauseRollout", model_ref, environment, request_id, change)

    async def resume(self, model_ref: str, environment: str, request_id: str) -> Rollout:
        async def change(tx: WriteTx, model: Model, rollout: Rollout, at: float) -> Rollout:
            resumed = resume(rollout, at)
            if resumed is not rollout:
                await tx.add_event(at, model.id, rollout.candidate_id, "rollout.resumed", resumed.message)
            return resumed

        return await self._act("ResumeRollout", model_ref, environment, request_id, change)

    async def cancel(self, model_ref: str, environment: str, request_id: str) -> Rollout:
        async def change(tx: WriteTx, model: Model, rollout: Rollout, at: float) -> Rollout:
            why = f"canceled at {rollout.candidate_percent}%"
            return await self._return_traffic(tx, rollout, RolloutState.CANCELED, "user", why, at)

        return await self._act("CancelRollout", model_ref, environment, request_id, change)

    async def complete(self, model_ref: str, environment: str, request_id: str) -> Rollout:
        async def change(tx: WriteTx, model: Model, rollout: Rollout, at: float) -> Rollout:
            why = f"completed by request at {rollout.candidate_percent}%: the candidate took over"
            return await self._succeed(tx, model, rollout, "user", why, at)

        return await self._act("CompleteRollout", model_ref, environment, request_id, change)

    async def rollback(self, model_ref: str, environment: str, request_id: str) -> tuple[Rollout, str]:
        """Re-points the environment to its previous deployment at once: a rollout in
        progress ends ROLLED_BACK; otherwise the latest promotion into it is undone."""
        environment = require_environment(environment)
        method = "RollbackEnvironment"

        async def body(tx: WriteTx, at: float) -> str:
            model = await require_model(tx, model_ref)
            active = next((r for r in await tx.active_rollouts([model.id]) if r.environment == environment), None)
            if active is not None:
                ended = await self._return_traffic(
                    tx,
                    active,
                    RolloutState.ROLLED_BACK,
                    "user",
                    f"rolled back by request at {active.candidate_percent}%",
                    at,
                )
                await tx.update_rollout(ended)
                return json.dumps([encode_rollout(ended), ended.previous_id])
            latest = await tx.latest_rollout(model.id, environment)
            into = await promotion.require_environment(tx, model, environment)
            current = into.deployment_id
            if latest is None or latest.state is not RolloutState.SUCCEEDED or latest.candidate_id != current:
                raise FailedPrecondition(
                    "NOTHING_TO_ROLL_BACK",
                    f"model {model.id} has no promotion into {environment} to undo "
                    + (
                        f"(its {environment} deployment {current} was not put there by the latest promotion)"
                        if latest is not None
                        else "(no promotion recorded)"
                    ),
                    model_id=model.id,
                )
            environments.require_no_promotion_in_flight(into)
            previous = await tx.get_deployment(latest.previous_id)
            if previous is None or previous.deleted or not previous.active or previous.load_failed:
                state = "deleted" if previous is None or previous.deleted else "inactive or failed"
                raise FailedPrecondition(
                    "PREVIOUS_DEPLOYMENT_UNAVAILABLE",
                    f"the previous {environment} deployment {latest.previous_id} is {state}: activate it, or promote "
                    "another deployment",
                    deployment_id=latest.previous_id,
                )
            await promotion.point_environment(tx, into, previous, at)
            why = f"rolled back by request: {previous.id} is the {environment} deployment again in place of {latest.candidate_id}"
            ended = replace(
                latest,
                state=RolloutState.ROLLED_BACK,
                trigger="user",
                message=why,
                update_time=at,
                keep_warm_until=None,
            )
            await tx.add_event(at, model.id, latest.candidate_id, "rollout.rolled_back", why, environment)
            await tx.update_rollout(ended)
            return json.dumps([encode_rollout(ended), previous.id])

        rollout, deployment_id = json.loads(
            await self._once(method, request_id, _fingerprint(method, model_ref, environment), body)
        )
        return decode_rollout(rollout), deployment_id

    async def get_policy(self, model_ref: str, environment: str) -> tuple[str, str, Policy, float | None]:
        model = await require_model(self.store, model_ref)
        environment = require_environment(environment)
        await promotion.require_environment(self.store, model, environment)
        stored = await self.store.get_rollout_policy(model.id, environment)
        return model.id, environment, *(stored or (UNSET_POLICY, None))

    async def update_policy(
        self, model_ref: str, environment: str, changes: Callable[[Policy], Policy], request_id: str, fingerprint: str
    ) -> tuple[str, str, Policy, float]:
        """Applies `changes` to the stored policy (an unset one starts from the defaults)."""
        environment = require_environment(environment)
        method = "UpdateRolloutPolicy"

        async def body(tx: WriteTx, at: float) -> str:
            model = await require_model(tx, model_ref)
            await promotion.require_environment(tx, model, environment)
            stored = await tx.get_rollout_policy(model.id, environment)
            policy = changes(stored[0] if stored else Policy())
            validate_policy(policy, self.limits)
            await tx.put_rollout_policy(model.id, environment, policy, at)
            await tx.add_event(
                at, model.id, "", "rollout.policy_updated", f"{environment} rollout policy: {policy.mode.value}"
            )
            return json.dumps([model.id, encode_policy(policy), at])

        model_id, policy, at = json.loads(await self._once(method, request_id, fingerprint, body))
        return model_id, environment, decode_policy(policy), at


def _cannot_serve(environment: Environment, candidate: Deployment | None, rollout: Rollout) -> str:
    """Why the candidate can no longer take the environment's traffic ("" if it can)."""
    if candidate is None or candidate.deleted:
        return f"the candidate {rollout.candidate_id} was deleted"
    if not candidate.active:
        return f"the candidate {candidate.id} was deactivated"
    if candidate.load_failed or candidate.state in domain.FAILED_STATES:
        return f"the candidate {candidate.id} failed ({candidate.status_message or candidate.state.value})"
    if environment.promoting_deployment_id != candidate.id:
        return f"the promotion of {candidate.id} was cancelled"
    if environment.deployment_id != rollout.previous_id:
        return f"the {rollout.environment} deployment changed meanwhile"
    return ""
