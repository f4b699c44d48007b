"""Level-based reconcile loop: drives observed state toward desired state.

Each pass reads the deployments that should run (or still have replicas), compares
the desired replica count with the replicas the runtime reports, starts or stops
replicas, and records the computed state. It is woken by every committed change and
every replica event, and also runs on a timer, so a missed wake-up only delays it.
After a restart it adopts the replicas a previous controller left running and stops
any replica process that nothing owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import pathlib
import shutil
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from controller import domain, environments
from controller.autoscaler import Autoscaler
from controller.builds import BuildManager, EnvironmentStatus
from controller.domain import Deployment, ReplicaPhase, ReplicaView, State
from controller.environment_specs import plural
from controller.isolation import ReplicaUsers
from controller.leader import Leadership, LeaseLost
from controller.lifecycle import Lifecycle
from controller.metrics import ControllerMetrics
from controller.packages import PackageStore
from controller.replica_records import ReplicaRecords
from controller.replica_runtime import ReplicaHandle, ReplicaRuntime, exit_description
from controller.routes import LoadTracker
from controller.secrets import Secrets
from controller.store import Store, new_id
from replica.package import ENVIRONMENT_ENV_VAR, load_package_config
from slipway.process import wait_event

log = logging.getLogger("slipway.reconciler")


@dataclass
class ReconcilerSettings:
    interval_seconds: float = 1.0
    load_timeout_seconds: float = 600.0
    crash_backoff_seconds: float = 0.5
    crash_backoff_max_seconds: float = 30.0
    # Packages and environments nothing refers to are removed this often, once unused
    # for the grace period (a push stores its package before committing the deployment).
    garbage_interval_seconds: float = 600.0
    garbage_grace_seconds: float = 3600.0
    log_retention_seconds: float = 7 * 86400.0  # replica logs, once the replica has stopped


@dataclass
class CrashRecord:
    count: int = 0
    retry_at: float = 0.0
    message: str = ""


class Reconciler:
    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        packages: PackageStore,
        runtime_factory,
        settings: ReconcilerSettings,
        autoscaler: Autoscaler,
        load: LoadTracker,
        on_replica_change: Callable[[ReplicaHandle], None] = lambda handle: None,
        before_stop: Callable[[ReplicaHandle], Awaitable[object]] | None = None,
        builds: BuildManager | None = None,
        *,
        secrets: Secrets,
        replica_users: ReplicaUsers | None = None,
        on_observed: Callable[[str, int, int], None] = lambda deployment_id, desired, ready: None,
        metrics: ControllerMetrics | None = None,
        leadership: Leadership | None = None,
        before_pass: Callable[[], Awaitable[None]] | None = None,
        replica_floor: Callable[[str], int] = lambda deployment_id: 0,
    ) -> None:
        self.store = store
        # Leader work run at the start of every pass (rolling promotions' steps, controller/rollouts.py),
        # and the replicas a deployment keeps whatever its autoscaler says (a rollout's shares).
        self.before_pass = before_pass
        self.replica_floor = replica_floor
        # Fences every runtime action (controller/leader.py); None: unfenced (a lone controller).
        self.leadership = leadership
        # Every replica record, fenced like the runtime action it records.
        self.records = ReplicaRecords(store, leadership)
        # Every pass's replica counts per deployment (desired, ready): the metric history.
        self.on_observed = on_observed
        self.metrics = metrics or ControllerMetrics()
        self.secrets = secrets
        # Whom replicas run as (None: the controller's own user).
        self.replica_users = replica_users
        self.lifecycle = lifecycle
        self.packages = packages
        self.settings = settings
        self.autoscaler = autoscaler
        self.load = load
        self.runtime: ReplicaRuntime = runtime_factory(self._on_replica_change)
        self._on_replica_change_hook = on_replica_change
        # Awaited between taking a replica out of the route table and signalling it to drain.
        self.before_stop = before_stop
        self.replicas: dict[str, ReplicaHandle] = {}
        self._crashes: dict[str, CrashRecord] = defaultdict(CrashRecord)
        self._wake = asyncio.Event()
        self._stopping: set[asyncio.Task] = set()
        # deployment ID -> (revision, error) of a replica whose model failed to load
        self._load_errors: dict[str, tuple[int, str]] = {}
        # Builds the Python environments of packages with requirements (None: never build).
        self.builds = builds
        self._next_collection = 0.0

    def poke(self) -> None:
        self._wake.set()

    def _on_replica_change(self, handle: ReplicaHandle) -> None:
        self._wake.set()
        self._on_replica_change_hook(handle)

    def replicas_of(self, deployment_id: str) -> list[ReplicaHandle]:
        return [h for h in self.replicas.values() if h.deployment_id == deployment_id]

    # --- loop -------------------------------------------------------------------

    async def run(self, adopt: bool = True) -> None:
        if adopt:
            await self.adopt_existing()
        while True:
            try:
                await self.reconcile_once()
            except LeaseLost as exc:  # the leadership loop stops this loop soon
                log.warning("reconcile pass stopped: %s", exc)
            except Exception:  # a failing pass must not stop the loop; the next one retries
                log.exception("reconcile pass failed")
            await wait_event(self._wake, self.settings.interval_seconds)
            self._wake.clear()

    async def adopt_existing(self) -> None:
        for row in await self.store.running_replicas():
            handle = await self.runtime.adopt(row.id, row.deployment_id, row.revision, row.pid, row.start_time)
            if handle is None:
                await self.records.stopped(row.id, time.time())
                continue
            log.info("adopted replica %s (pid %s) of deployment %s", row.id, row.pid, row.deployment_id)
            self.replicas[row.id] = handle
        await self.stop_orphans(set(self.replicas))

    async def stop_orphans(self, known: set[str]) -> None:
        """Stop the replica processes that are not `known` (fenced: only the leader's to stop)."""
        await self.records.fence()
        await self.runtime.stop_orphans(known)

    async def reconcile_once(self) -> None:
        started = time.perf_counter()
        try:
            await self._pass()
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _pass(self) -> None:
        if self.leadership is not None and not self.leadership.held():
            # Resumed after a pause past the lease, say: act on nothing, read nothing stale.
            raise LeaseLost(f"controller {self.leadership.holder}'s leader lease has run out")
        if time.monotonic() >= self._next_collection:
            self._next_collection = time.monotonic() + self.settings.garbage_interval_seconds
            try:
                await self.collect_garbage(self.settings.garbage_grace_seconds)
            except OSError:
                log.exception("garbage collection failed")
        await self._record_exits()
        if self.before_pass is not None:
            await self.before_pass()
        deployments = await self.store.deployments_to_reconcile()
        wanted = {d.id for d in deployments}
        for deployment in deployments:
            await self._reconcile(deployment)
        await self._forget_deleted(wanted)
        for handle in list(self.replicas.values()):
            if handle.deployment_id not in wanted:
                self._stop(handle)

    async def _forget_deleted(self, wanted: set[str]) -> None:
        """Metrics: deployments no longer reconciled want no replicas; deleted ones lose
        their series (checked for those a commit touched since the last pass)."""
        metrics = self.metrics
        touched, metrics.touched = metrics.touched, set()
        for deployment_id in [d for d in metrics.labels if d not in wanted]:
            metrics.idle(deployment_id)
            if deployment_id in touched:
                deployment = await self.store.get_deployment(deployment_id)
                if deployment is None or deployment.delete_time is not None:
                    metrics.forget(deployment_id)

    async def collect_garbage(self, grace_seconds: float) -> int:
        """Delete stored packages and built environments that no deployment (unless
        deleted) and no running replica refers to, and the logs of replicas stopped
        longer ago than the log retention; returns how many."""
        digests = await self.store.package_digests_in_use()
        digests |= {h.package_dir.name for h in self.replicas.values() if h.package_dir is not None}
        doomed = self.packages.prune(digests, grace_seconds)
        if self.builds is not None:
            doomed += self.builds.prune(digests, self.packages.directory, grace_seconds)
        doomed += self.runtime.old_logs(set(self.replicas), time.time() - self.settings.log_retention_seconds)
        if self.runtime.sandboxes is not None:
            doomed += self.runtime.sandboxes.copies_except(digests)
        for path in doomed:
            await asyncio.to_thread(_remove, path)
        if doomed:
            log.info("removed %d unused packages, environments and old replica logs", len(doomed))
        return len(doomed)

    async def shutdown(self) -> None:
        """Drain and stop every replica (the platform is going down)."""
        if self.builds is not None:
            await self.builds.close()
        for handle in list(self.replicas.values()):
            self._stop(handle)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
        await self._record_exits()

    # --- one deployment ---------------------------------------------------------

    async def _reconcile(self, deployment: Deployment) -> None:
        handles = self.replicas_of(deployment.id)
        crash = self._crashes[deployment.id]
        for handle in handles:
            loading = handle.phase in (ReplicaPhase.STARTING, ReplicaPhase.LOADING)
            if loading and time.time() - handle.start_time > self.settings.load_timeout_seconds:
                handle.load_error = f"the model did not load within {self.settings.load_timeout_seconds:.0f} s"
                self._stop(handle)
        failure = self._load_errors.pop(deployment.id, None)
        if failure and failure[0] == deployment.revision and not deployment.load_failed:
            await self.lifecycle.observed.record_load_failure(deployment, failure[1])
            deployment = await self.store.get_deployment(deployment.id) or deployment
        deployment, env = await self._environment(deployment)

        desired = self._desired(deployment)
        live = [h for h in handles if h.phase is not ReplicaPhase.DRAINING and not h.exited]
        current = [h for h in live if h.revision == deployment.revision]
        if deployment.delete_time is not None:
            self.metrics.forget(deployment.id)
        else:
            cold = deployment.state in (State.SCALED_TO_ZERO, State.WAKING_UP) and not live
            self.metrics.observed(deployment, desired, cold)
        outdated = [h for h in live if h.revision != deployment.revision]
        if outdated and (deployment.is_development or any(h.phase is ReplicaPhase.READY for h in current)):
            # Development updates in place (its requests in flight may fail, as the spec allows);
            # published ones keep serving until the new revision is ready.
            for handle in outdated:
                self._stop(handle, drain=not deployment.is_development)
        # Development runs one replica at most: the next revision starts once the last one is gone.
        replacing = deployment.is_development and any(
            h.revision != deployment.revision and not h.exited for h in handles
        )
        if len(current) < desired and time.time() >= crash.retry_at and not env.building and not replacing:
            for _ in range(desired - len(current)):
                await self._start(deployment, env.python)
        elif len(current) > desired:
            surplus = sorted(current, key=lambda h: h.phase is ReplicaPhase.READY)[: len(current) - desired]
            for handle in surplus:
                self._stop(handle)
        if any(h.phase is ReplicaPhase.READY for h in current):
            crash.count, crash.message = 0, ""

        views = [ReplicaView(h.phase, h.revision) for h in self.replicas_of(deployment.id) if not h.exited]
        state, message = domain.compute_state(
            deployment,
            views,
            desired,
            load_error=deployment.status_message,
            unhealthy_message=crash.message,
            waking=deployment.state in (State.SCALED_TO_ZERO, State.WAKING_UP),
            updating=deployment.state is State.UPDATING,
            building=f"building the environment ({plural(env.requirements)})" if env.building else "",
            build_failed=deployment.load_failed and deployment.state is State.BUILD_FAILED,
        )
        ready = sum(1 for v in views if v.phase is ReplicaPhase.READY)
        self.on_observed(deployment.id, desired, ready)
        if (state, message, desired, ready) != (
            deployment.state,
            deployment.status_message,
            deployment.desired_replicas,
            deployment.ready_replicas,
        ):
            await self.lifecycle.observed.record_observed(deployment, state, message, desired, ready)

    def _desired(self, deployment: Deployment) -> int:
        if not domain.should_run(deployment):
            self.autoscaler.forget(deployment.id)
            return 0
        concurrency, requests_total = self.load.observe(deployment.id)
        target = self.autoscaler.target(
            deployment.id,
            deployment.autoscaling,
            concurrency,
            requests_total,
            time.monotonic(),
            resume_from=domain.recorded_target(deployment),
            coming_up=deployment.state in domain.COMING_UP_STATES,
        )
        floor = min(self.replica_floor(deployment.id), deployment.autoscaling.max_replica)
        return max(domain.desired_replicas(deployment, target), floor)

    async def _environment(self, deployment: Deployment) -> tuple[Deployment, EnvironmentStatus]:
        """The deployment's Python environment: ready, being built, or failed to build (then
        recorded as BUILD_FAILED, and the returned record is no longer to run)."""
        if self.builds is None or not domain.should_run(deployment):
            return deployment, EnvironmentStatus()
        env = await self.builds.status(deployment, self.packages.directory(deployment.package_digest))
        if env.error:
            await self.lifecycle.observed.record_build_failure(deployment, env.error)
            fresh = await self.store.get_deployment(deployment.id) or deployment
            # Not recorded (the deployment changed meanwhile): start nothing, the next pass rebuilds.
            return fresh, EnvironmentStatus(building=not fresh.load_failed)
        return deployment, env

    async def _start(self, deployment: Deployment, python: str | None = None) -> None:
        replica_id = new_id("r")
        package_dir = self.packages.directory(deployment.package_digest)
        config = await asyncio.to_thread(_package_config, package_dir)
        environment = {
            ENVIRONMENT_ENV_VAR: environments.deployment_environment(deployment),
            **await self.secrets.environ_for(config.secret_names),
        }
        user = None
        if self.replica_users is not None:
            user = self.replica_users.for_model(await self.store.model_number(deployment.model_id))
        # Recorded (fenced) before the process exists, so a controller that lost the lease
        # starts nothing, and a successor that adopts meanwhile finds a row without a pid and
        # counts it stopped; recorded again (fenced) with its pid once started.
        await self.records.starting(replica_id, deployment.id, deployment.revision, time.time())
        if self.leadership is not None and not self.leadership.held():
            raise LeaseLost("the leader lease ran out while the replica was being recorded")
        try:
            handle = await self.runtime.start(
                replica_id,
                deployment.id,
                deployment.revision,
                package_dir,
                environment,
                python=python,
                development=deployment.is_development,
                user=user,
                model_id=deployment.model_id,
                model_name=await self._model_name(deployment.model_id),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.records.stopped(replica_id, time.time())
            raise
        try:
            await self.records.started(replica_id, handle.pid, handle.start_time)
        except LeaseLost:
            # Lost the lease while starting it (paused, say): the process is no one's; end it.
            await self.runtime.stop(handle, drain=False)
            raise
        self.replicas[replica_id] = handle
        log.info("started replica %s (pid %s) for deployment %s", replica_id, handle.pid, deployment.id)

    def _stop(self, handle: ReplicaHandle, drain: bool = True) -> None:
        """Out of the route table first, then drained (unless not to), then stopped."""
        if handle.phase is ReplicaPhase.DRAINING or handle.exited:
            return
        handle.phase = ReplicaPhase.DRAINING
        self._on_replica_change(handle)
        task = asyncio.create_task(self._drain_and_stop(handle, drain))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _drain_and_stop(self, handle: ReplicaHandle, drain: bool) -> None:
        if self.before_stop is not None:
            await self.before_stop(handle)
        try:
            await self.records.fence()  # stopping is recorded when the process has exited
        except LeaseLost as exc:
            log.warning("replica %s not stopped: %s", handle.id, exc)
            return
        await self.runtime.stop(handle, drain)

    async def _record_exits(self) -> None:
        """Persist port/ready/stop times; forget replicas that exited; note crashes and load failures."""
        for handle in list(self.replicas.values()):
            if handle.exited:
                del self.replicas[handle.id]
                if handle.load_error:
                    self._load_errors[handle.deployment_id] = (handle.revision, handle.load_error)
                elif handle.phase is not ReplicaPhase.DRAINING and handle.ready_time is None:
                    tail = handle.log_tail()
                    error = f"replica {exit_description(handle.exit_code)} before the model loaded"
                    self._load_errors[handle.deployment_id] = (
                        handle.revision,
                        error + (f"; log:\n{tail}" if tail else ""),
                    )
                elif handle.phase is not ReplicaPhase.DRAINING:
                    self._note_crash(handle)
                await self.records.exited(handle.id, handle.exit_time or time.time(), handle.port)
            elif handle.phase is ReplicaPhase.READY and not handle.ready_recorded:
                handle.ready_recorded = True
                self.metrics.replica_ready(handle.deployment_id, handle.ready_time or time.time())
                await self.records.ready(handle.id, handle.port, handle.ready_time, handle.http_port)

    async def _model_name(self, model_id: str) -> str:
        """The model's name, which a replica's direct routes accept for its ID."""
        model = await self.store.get_model(model_id)
        return model.name if model is not None else ""

    def _note_crash(self, handle: ReplicaHandle) -> None:
        crash = self._crashes[handle.deployment_id]
        crash.count += 1
        self.metrics.restarted(handle.deployment_id)
        delay = min(
            self.settings.crash_backoff_seconds * 2 ** (crash.count - 1), self.settings.crash_backoff_max_seconds
        )
        crash.retry_at = time.time() + delay
        if handle.unhealthy:
            crash.message = (
                f"replica {handle.id} was unhealthy ({handle.unhealthy}); replacing it (crash {crash.count})"
            )
        else:
            crash.message = f"replica {handle.id} {exit_description(handle.exit_code)} unexpectedly; restarting (crash {crash.count})"
        log.warning(crash.message)


# Stored packages never change (content-addressed): a replica start, on the cold-start path,
# parses a package's config.yaml only the first time.
_package_config = functools.lru_cache(maxsize=256)(load_package_config)


def _remove(path: pathlib.Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
