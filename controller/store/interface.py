"""The store as the rest of the controller sees it: reads, and write transactions that see
their own writes and commit as one. controller/store/queries.py implements it over either
backend (SQLite or PostgreSQL); nothing outside controller/store/ imports a backend."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from controller.domain import AutoscalingSettings, Deployment, Model
from controller.environments import Environment
from controller.store.async_requests import AsyncRequestQueries
from controller.store.rollout_queries import RolloutReadsProtocol, RolloutWritesProtocol
from controller.store.rows import ApiKeyRow, Change, Page, ReplicaRow, RouteSnapshot, SecretRow


class Reads(RolloutReadsProtocol, Protocol):
    """What both a write transaction and the store outside one can read."""

    # The async request queue: reads outside a transaction, changes inside one.
    async_requests: AsyncRequestQueries

    async def get_model(self, id_or_name: str) -> Model | None:
        """By ID (deleted ones too), else by the name of a model that is not deleted."""

    async def model_number(self, model_id: str) -> int:
        """The model's number: from 1, in creation order, never reused."""

    async def list_secrets(self) -> list[SecretRow]: ...
    async def get_secrets(self, names: Iterable[str]) -> list[SecretRow]: ...
    async def get_live_model_by_name(self, name: str) -> Model | None: ...
    async def get_deployment(self, deployment_id: str) -> Deployment | None: ...
    async def get_api_key(self, key_id: str) -> ApiKeyRow | None: ...
    async def count_live_api_keys(self) -> int: ...
    async def deployment_names(self, model_id: str, among: str | None = None) -> set[str]:
        """The names of the model's live deployments (only `among`, if it is one of them)."""

    async def model_deployments(self, model_id: str) -> list[Deployment]: ...
    async def get_environment(self, model_id: str, name: str) -> Environment | None:
        """A live environment of the model (production always, until the model is deleted)."""

    async def model_environments(self, model_id: str) -> list[Environment]:
        """The model's live environments, production first (in creation order)."""


class WriteTx(RolloutWritesProtocol, Reads, Protocol):
    """One transaction: isolated from every other write to the database (by any controller)
    that touches what it touches (controller/store/locks.py), committed when its block ends,
    rolled back if the block raises."""

    touched: set[str]
    touched_models: set[str]
    touched_api_keys: set[str]

    async def put_secret(self, name: str, ciphertext: bytes, now: float) -> None: ...
    async def delete_secret(self, name: str) -> bool: ...
    async def insert_model(self, name: str, now: float) -> Model: ...
    async def update_model(self, model_id: str, now: float, **values: Any) -> None: ...
    async def insert_deployment(self, deployment: Deployment) -> None: ...
    async def update_deployment(self, deployment_id: str, **values: Any) -> None: ...
    async def add_event(
        self, now: float, model_id: str, deployment_id: str, type_: str, message: str, environment: str = ""
    ) -> None: ...
    async def insert_environment(
        self, model_id: str, name: str, autoscaling: AutoscalingSettings | None, now: float
    ) -> None: ...
    async def update_environment(self, model_id: str, name: str, now: float, **values: Any) -> None:
        """`deployment_id`, `promoting_deployment_id`, `autoscaling` or `delete_time` of a live environment."""

    async def claim_request(
        self, request_id: str, method: str, fingerprint: str, now: float
    ) -> tuple[str, str, str] | None:
        """Claims the request_id for this transaction, or (method, fingerprint, result) of
        the request first made with it. Before anything else the transaction does."""

    async def save_request(self, request_id: str, result: str) -> None:
        """The result of the request this transaction claimed."""

    async def record_package(self, digest: str, size: int, now: float) -> None: ...
    async def insert_api_key(self, row: ApiKeyRow) -> None: ...
    async def record_api_key_use(self, key_id: str, used_at: float) -> None: ...
    async def revoke_api_key(self, key_id: str, now: float) -> None: ...
    async def insert_replica(self, row: ReplicaRow) -> None: ...
    async def update_replica(self, replica_id: str, **values: Any) -> None: ...
    async def take_lease(self, holder: str, now: float, duration: float, force: bool = False) -> int | None:
        """Takes or renews the leader lease: its fencing token, or None while another holds it."""

    async def lease_is(self, holder: str, token: int, now: float) -> bool:
        """Whether `holder` still holds the leader lease with this token (the fence)."""

    async def release_lease(self, holder: str) -> None: ...


class Store(Reads, Protocol):
    # Told the seconds of every committed write transaction (metrics).
    on_write: Callable[[float], None]

    @property
    def description(self) -> str:
        """Which database (a URL without its password)."""

    async def close(self) -> None: ...
    def add_listener(self, listener: Callable[[Change], None]) -> None:
        """Called after each commit with the IDs of the deployments and models it changed
        (and with a reset Change when other controllers' changes may have been missed)."""

    def remove_listener(self, listener: Callable[[Change], None]) -> None: ...
    async def follow_other_controllers(self) -> None:
        """From now on listeners also hear the commits of other controllers on the database."""

    def write(self) -> contextlib.AbstractAsyncContextManager[WriteTx]: ...

    async def list_models(self, page_size: int, page_token: str) -> Page: ...
    async def list_deployments(self, model_id: str, show_deleted: bool, page_size: int, page_token: str) -> Page: ...
    async def list_environments(self, model_id: str, page_size: int, page_token: str) -> Page: ...
    async def environments_of(self, model_ids: Iterable[str]) -> list[Environment]:
        """The live environments of these models."""

    async def deployments_to_reconcile(self) -> list[Deployment]:
        """Deployments that should run, or still have replicas that must be stopped."""

    async def route_snapshot(self) -> RouteSnapshot: ...
    async def list_api_keys(self, show_revoked: bool, page_size: int, page_token: str) -> Page: ...
    async def all_api_keys(self) -> list[ApiKeyRow]: ...
    async def api_keys_by_id(self, ids: Iterable[str]) -> list[ApiKeyRow]: ...
    async def record_api_key_uses(self, last_used: dict[str, float]) -> None:
        """Last-use times of many keys in one transaction (not a route change)."""

    async def models_by_id(self, ids: Iterable[str]) -> list[Model]: ...
    async def deployments_by_id(self, ids: Iterable[str]) -> list[Deployment]: ...
    async def package_digests_in_use(self) -> set[str]: ...
    async def running_replicas(self) -> list[ReplicaRow]: ...
    async def replica_intervals(
        self, deployment_ids: list[str], since: float
    ) -> dict[str, list[tuple[float, float | None]]]:
        """(start, stop) of each replica of these deployments that ran after `since`."""

    async def replica_deployment_id(self, replica_id: str) -> str | None:
        """The deployment a replica (running or not) was started for."""

    async def list_usage(self, model_id: str, page_size: int, page_token: str, now: float) -> Page: ...
    async def list_events(
        self,
        model_id: str,
        deployment_id: str,
        page_size: int,
        page_token: str,
        newest_first: bool = False,
        environment: str = "",
    ) -> Page: ...
