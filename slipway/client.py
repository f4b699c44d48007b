"""A small synchronous client SDK for the Slipway controller API.

    from slipway.client import SlipwayClient

    with SlipwayClient() as client:            # SLIPWAY_CONTROLLER or 127.0.0.1:7100
        pushed = client.push("my-model/", target="published")
        client.wait_until_serving(pushed.deployment.id)
        for deployment in client.list_deployments(model_id=pushed.model.id):
            print(deployment.name, deployment.state)

A controller or gateway serving TLS is verified with `ca_file=` (a PEM CA certificate;
SLIPWAY_TLS_CA by default); without one the channel is plaintext.

Every method raises `grpc.RpcError` on a refusal; `format_rpc_error` turns one into
a readable line ("FAILED_PRECONDITION (PRODUCTION_NOT_DELETABLE): ...") and
`error_reason` gives the machine-readable reason.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from slipway.addresses import parse_addresses
from slipway.channels import secure_or_insecure_channel
from slipway.credentials import find_api_key, with_api_key
from slipway.failover import FailoverChannel
from slipway.packaging import archive_package
from slipway.tls import read_ca
from slipway.v1 import (
    deployment_service_pb2 as ds,
)
from slipway.v1 import (
    deployment_service_pb2_grpc,
    environment_service_pb2_grpc,
    key_service_pb2_grpc,
    log_service_pb2_grpc,
    model_service_pb2_grpc,
    rollout_service_pb2_grpc,
    secret_service_pb2_grpc,
)
from slipway.v1 import (
    key_service_pb2 as ks,
)
from slipway.v1 import (
    model_service_pb2 as ms,
)
from slipway.v1 import (
    resources_pb2 as res,
)
from slipway.v1 import (
    secret_service_pb2 as ss,
)

DEFAULT_CONTROLLER = "127.0.0.1:7100"
DEFAULT_GATEWAY = "127.0.0.1:7200"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
JSON = "application/json"

State = res.DeploymentState
# The states a deployment settles in once it serves its current revision: the controller
# completes a promotion on either (a deployment may scale to zero before anyone sees it
# ACTIVE), and a push to a scaled-to-zero deployment leaves it there until a request comes.
SETTLED_STATES = frozenset({State.DEPLOYMENT_STATE_ACTIVE, State.DEPLOYMENT_STATE_SCALED_TO_ZERO})
FAILURE_STATES = frozenset(
    {
        State.DEPLOYMENT_STATE_BUILD_FAILED,
        State.DEPLOYMENT_STATE_DEPLOY_FAILED,
        State.DEPLOYMENT_STATE_FAILED,
    }
)
PUSH_TARGETS: dict[str, ds.PushTarget] = {
    "development": ds.PUSH_TARGET_DEVELOPMENT,
    "published": ds.PUSH_TARGET_PUBLISHED,
    "production": ds.PUSH_TARGET_PRODUCTION,
}
AUTOSCALING_FIELDS = tuple(res.AutoscalingSettings.DESCRIPTOR.fields_by_name)
KEY_SCOPES: dict[str, ks.KeyScope] = {
    "admin": ks.KEY_SCOPE_ADMIN,
    "deploy": ks.KEY_SCOPE_DEPLOY,
    "inference": ks.KEY_SCOPE_INFERENCE,
    "metrics": ks.KEY_SCOPE_METRICS,
}


def default_controller_address() -> str:
    return os.environ.get("SLIPWAY_CONTROLLER") or DEFAULT_CONTROLLER


def controller_channel(address: str, ca: bytes | None) -> grpc.Channel:
    """A channel to the controller at `address`, or (a comma-separated list) to the first
    reachable of several, failing over between them (slipway/failover.py)."""
    addresses = parse_addresses(address)
    if len(addresses) == 1:
        return secure_or_insecure_channel(addresses[0], ca, CHANNEL_OPTIONS)
    return FailoverChannel(addresses, lambda one: secure_or_insecure_channel(one, ca, CHANNEL_OPTIONS))


def client_ca(ca_file: str | os.PathLike[str] | None) -> bytes | None:
    """The CA that verifies servers serving TLS: `ca_file`, else SLIPWAY_TLS_CA; None means plaintext."""
    path = ca_file or os.environ.get("SLIPWAY_TLS_CA")
    return read_ca(path) if path else None


# --- errors ---------------------------------------------------------------------


class SlipwayError(Exception):
    """A client-side failure that is not a gRPC status (timeout, failed deployment)."""


class DeploymentFailed(SlipwayError):
    def __init__(self, deployment: res.Deployment, message: str):
        super().__init__(message)
        self.deployment = deployment


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(err)
    except (ValueError, AttributeError):  # details disagree with the code, or not a call
        return None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of a Slipway refusal (for example PRODUCTION_NOT_DELETABLE), or ""."""
    info = _error_info(err)
    return info.reason if info else ""


def format_rpc_error(err: grpc.RpcError) -> str:
    """One readable line: "CODE (REASON): message", or "CODE: message" without a reason."""
    code = err.code() if hasattr(err, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    message = (err.details() if hasattr(err, "details") else "") or str(err)
    reason = error_reason(err)
    head = f"{name} ({reason})" if reason else name
    return f"{head}: {' '.join(message.split())}"


# --- helpers ------------------------------------------------------------------------


def state_name(state: int) -> str:
    """`ACTIVE` for DEPLOYMENT_STATE_ACTIVE."""
    return res.DeploymentState.Name(state).removeprefix("DEPLOYMENT_STATE_")


def ready_replicas(deployment: res.Deployment) -> list[res.Replica]:
    return [replica for replica in deployment.replicas if replica.state == res.REPLICA_STATE_READY and replica.address]


def is_serving(deployment: res.Deployment) -> bool:
    """Serving its current revision: SCALED_TO_ZERO (the next request starts a replica of
    it), or ACTIVE and (when the controller lists replicas) a ready replica runs that
    revision, so a state left over from an older revision of a development deployment
    does not count."""
    if deployment.state not in SETTLED_STATES:
        return False
    if deployment.state == State.DEPLOYMENT_STATE_SCALED_TO_ZERO:
        return True
    if not deployment.replicas:
        return True
    return any(r.revision in (0, deployment.revision) for r in ready_replicas(deployment))


def payload_bytes(payload: bytes | str) -> bytes:
    return payload.encode("utf-8") if isinstance(payload, str) else payload


# --- the client --------------------------------------------------------------------


class SlipwayClient:
    """Synchronous client of the controller's ModelService and DeploymentService.

    `timeout` is the deadline of each unary call in seconds (pushes get
    `push_timeout`). Mutations take an optional `request_id` (idempotency key: a
    retried call with the same key is applied once). `ca_file` verifies a controller
    serving TLS (default SLIPWAY_TLS_CA; plaintext when neither is set). `api_key`: see
    slipway/credentials.py (by default SLIPWAY_API_KEY, else a local controller's admin key).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 30.0,
        push_timeout: float = 600.0,
        channel: grpc.Channel | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
    ):
        self.address = address or default_controller_address()
        self.timeout = timeout
        self.push_timeout = push_timeout
        self._channel = channel or controller_channel(self.address, client_ca(ca_file))
        authorized = with_api_key(self._channel, find_api_key(api_key))
        self.models = model_service_pb2_grpc.ModelServiceStub(authorized)
        self.deployments = deployment_service_pb2_grpc.DeploymentServiceStub(authorized)
        self.keys = key_service_pb2_grpc.KeyServiceStub(authorized)
        self.secrets = secret_service_pb2_grpc.SecretServiceStub(authorized)
        # EnvironmentService: used as it is (slipway/environment_commands.py).
        self.environments = environment_service_pb2_grpc.EnvironmentServiceStub(authorized)
        # LogService: used as it is (slipway/log_commands.py).
        self.logs = log_service_pb2_grpc.LogServiceStub(authorized)
        # RolloutService: used as it is (slipway/rollout_commands.py).
        self.rollouts = rollout_service_pb2_grpc.RolloutServiceStub(authorized)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SlipwayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_until_reachable(self, timeout: float = 10.0) -> None:
        try:
            if isinstance(self._channel, FailoverChannel):
                deadline = time.monotonic() + timeout
                while not self._channel.any_reachable():
                    if time.monotonic() >= deadline:
                        raise grpc.FutureTimeoutError()
                    time.sleep(0.1)
                return
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise SlipwayError(f"controller at {self.address} is not reachable") from None

    def _paginate(self, method: Callable, request: Any, field: str) -> Iterator[Any]:
        seen: set[str] = set()
        while True:
            response = method(request, timeout=self.timeout)
            yield from getattr(response, field)
            token = response.next_page_token
            if not token or token in seen:
                return
            seen.add(token)
            request.page_token = token

    # API keys (admin scope)

    def create_key(
        self, scope: str, model_ids: Sequence[str] = (), ttl_seconds: float | None = None, name: str = ""
    ) -> ks.CreateKeyResponse:
        """`scope`: admin, deploy, inference or metrics. The response's secret_key is shown only here."""
        request = ks.CreateKeyRequest(name=name, scope=KEY_SCOPES[scope], model_ids=list(model_ids))
        if ttl_seconds is not None:
            request.ttl.FromTimedelta(datetime.timedelta(seconds=ttl_seconds))
        return self.keys.CreateKey(request, timeout=self.timeout)

    def list_keys(self, show_revoked: bool = False) -> list[ks.ApiKey]:
        return list(self._paginate(self.keys.ListKeys, ks.ListKeysRequest(show_revoked=show_revoked), "keys"))

    def revoke_key(self, key_id: str) -> ks.ApiKey:
        return self.keys.RevokeKey(ks.RevokeKeyRequest(key_id=key_id), timeout=self.timeout).key

    # models

    def get_model(self, model_id: str) -> res.Model:
        """By model ID or model name."""
        return self.models.GetModel(ms.GetModelRequest(model_id=model_id), timeout=self.timeout).model

    def iter_models(self, page_size: int = 0) -> Iterator[res.Model]:
        return self._paginate(self.models.ListModels, ms.ListModelsRequest(page_size=page_size), "models")

    def list_models(self) -> list[res.Model]:
        return list(self.iter_models())

    def delete_model(self, model_id: str, request_id: str = "") -> res.Model:
        request = ms.DeleteModelRequest(model_id=model_id, request_id=request_id)
        return self.models.DeleteModel(request, timeout=self.timeout).model

    # secrets (values go in, never come out)

    def set_secret(self, name: str, value: bytes | str) -> ss.Secret:
        request = ss.SetSecretRequest(name=name, value=payload_bytes(value))
        return self.secrets.SetSecret(request, timeout=self.timeout).secret

    def list_secrets(self) -> list[ss.Secret]:
        return list(self.secrets.ListSecrets(ss.ListSecretsRequest(), timeout=self.timeout).secrets)

    def delete_secret(self, name: str) -> None:
        self.secrets.DeleteSecret(ss.DeleteSecretRequest(name=name), timeout=self.timeout)

    # deployments

    def push(
        self,
        directory: Path | str,
        target: str | ds.PushTarget = "development",
        deployment_name: str = "",
        request_id: str = "",
        model_name: str = "",
        metadata: Mapping[str, Any] | None = None,
        environment: str = "",
    ) -> ds.CreateDeploymentResponse:
        """Archive `directory` and create (or, for development, update) a deployment.

        `target` is "development", "published", "production" or a PushTarget value;
        `model_name` overrides config.yaml's (and is needed when it has none); `environment`:
        the one a "production" push is promoted into (production when empty).
        """
        archive, digest = archive_package(directory)
        request = ds.CreateDeploymentRequest(
            package_archive=archive,
            package_sha256=digest,
            target=PUSH_TARGETS[target] if isinstance(target, str) else target,
            deployment_name=deployment_name,
            request_id=request_id,
            model_name=model_name,
            environment=environment,
        )
        if metadata:
            request.metadata.update(metadata)
        return self.deployments.CreateDeployment(request, timeout=self.push_timeout)

    def patch_deployment(
        self,
        deployment_id: str,
        base_package_digest: str,
        patches: list[ds.FilePatch],
        request_id: str = "",
    ) -> ds.PatchDeploymentResponse:
        """Live reload: apply file changes to the development deployment's package
        `base_package_digest` (ABORTED with STALE_PACKAGE_BASE if it is no longer current)."""
        request = ds.PatchDeploymentRequest(
            deployment_id=deployment_id,
            base_package_digest=base_package_digest,
            patches=patches,
            request_id=request_id,
        )
        return self.deployments.PatchDeployment(request, timeout=self.push_timeout)

    def get_deployment(self, deployment_id: str) -> res.Deployment:
        request = ds.GetDeploymentRequest(deployment_id=deployment_id)
        return self.deployments.GetDeployment(request, timeout=self.timeout).deployment

    def iter_deployments(
        self, model_id: str = "", show_deleted: bool = False, page_size: int = 0
    ) -> Iterator[res.Deployment]:
        request = ds.ListDeploymentsRequest(model_id=model_id, show_deleted=show_deleted, page_size=page_size)
        return self._paginate(self.deployments.ListDeployments, request, "deployments")

    def list_deployments(self, model_id: str = "", show_deleted: bool = False) -> list[res.Deployment]:
        return list(self.iter_deployments(model_id, show_deleted))

    def update_deployment(self, deployment: res.Deployment, paths: list[str], request_id: str = "") -> res.Deployment:
        request = ds.UpdateDeploymentRequest(
            deployment=deployment,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            request_id=request_id,
        )
        return self.deployments.UpdateDeployment(request, timeout=self.timeout).deployment

    def rename_deployment(self, deployment_id: str, name: str, request_id: str = "") -> res.Deployment:
        return self.update_deployment(res.Deployment(id=deployment_id, name=name), ["name"], request_id)

    def update_autoscaling(self, deployment_id: str, request_id: str = "", **settings: Any) -> res.Deployment:
        """Change only the given settings, e.g. `update_autoscaling(id, max_replica=3)`."""
        unknown = set(settings) - set(AUTOSCALING_FIELDS)
        if unknown:
            raise TypeError(f"unknown autoscaling settings: {', '.join(sorted(unknown))}")
        deployment = res.Deployment(id=deployment_id, autoscaling_settings=res.AutoscalingSettings(**settings))
        paths = [f"autoscaling_settings.{name}" for name in settings]
        return self.update_deployment(deployment, paths, request_id)

    def _deployment_call(self, method: Callable, request_type: type, deployment_id: str, request_id: str):
        request = request_type(deployment_id=deployment_id, request_id=request_id)
        return method(request, timeout=self.timeout)

    def delete_deployment(self, deployment_id: str, request_id: str = "") -> res.Deployment:
        return self._deployment_call(
            self.deployments.DeleteDeployment, ds.DeleteDeploymentRequest, deployment_id, request_id
        ).deployment

    def activate_deployment(self, deployment_id: str, request_id: str = "") -> res.Deployment:
        return self._deployment_call(
            self.deployments.ActivateDeployment, ds.ActivateDeploymentRequest, deployment_id, request_id
        ).deployment

    def deactivate_deployment(self, deployment_id: str, request_id: str = "") -> res.Deployment:
        return self._deployment_call(
            self.deployments.DeactivateDeployment, ds.DeactivateDeploymentRequest, deployment_id, request_id
        ).deployment

    def promote_deployment(
        self, deployment_id: str, request_id: str = "", environment: str = ""
    ) -> ds.PromoteDeploymentResponse:
        """The response's deployment is the one that becomes the environment's (production's when
        `environment` is empty; a new one when promoting development); `completed` tells whether
        the environment already switched."""
        request = ds.PromoteDeploymentRequest(
            deployment_id=deployment_id, request_id=request_id, environment=environment
        )
        return self.deployments.PromoteDeployment(request, timeout=self.timeout)

    def wake_deployment(self, deployment_id: str, request_id: str = "") -> res.Deployment:
        return self._deployment_call(
            self.deployments.WakeDeployment, ds.WakeDeploymentRequest, deployment_id, request_id
        ).deployment

    def watch_deployments(
        self, model_id: str = "", deployment_id: str = "", timeout: float | None = None
    ) -> Iterator[ds.WatchDeploymentsResponse]:
        """The current state of matching deployments, then every change. The returned
        call can be cancelled with `.cancel()`; `timeout` ends it with DEADLINE_EXCEEDED."""
        request = ds.WatchDeploymentsRequest(model_id=model_id, deployment_id=deployment_id)
        return self.deployments.WatchDeployments(request, timeout=timeout)

    def iter_usage(self, model_id: str = "", page_size: int = 0) -> Iterator[res.UsageRecord]:
        request = ds.ListUsageRecordsRequest(model_id=model_id, page_size=page_size)
        return self._paginate(self.deployments.ListUsageRecords, request, "usage_records")

    def list_usage(self, model_id: str = "") -> list[res.UsageRecord]:
        return list(self.iter_usage(model_id))

    def iter_events(self, model_id: str = "", deployment_id: str = "", page_size: int = 0) -> Iterator[res.Event]:
        request = ds.ListEventsRequest(model_id=model_id, deployment_id=deployment_id, page_size=page_size)
        return self._paginate(self.deployments.ListEvents, request, "events")

    def list_events(self, model_id: str = "", deployment_id: str = "", limit: int | None = None) -> list[res.Event]:
        """Events in sequence order; with `limit`, only the most recent `limit`."""
        events = sorted(self.iter_events(model_id, deployment_id), key=lambda e: e.sequence)
        return events[-limit:] if limit else events

    # waiting

    def wait_until_serving(
        self,
        deployment_id: str,
        timeout: float = 300.0,
        on_update: Callable[[res.Deployment], None] | None = None,
    ) -> res.Deployment:
        """Follow WatchDeployments until the deployment serves (see `is_serving`).

        Calls `on_update` with every deployment message. Raises DeploymentFailed when
        it reaches BUILD_FAILED, DEPLOY_FAILED or FAILED or is deleted, and
        SlipwayError on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SlipwayError(f"timed out after {timeout:g}s waiting for deployment {deployment_id}")
            call = self.watch_deployments(deployment_id=deployment_id, timeout=remaining)
            try:
                for message in call:
                    deployment = message.deployment
                    if deployment.id != deployment_id:
                        continue
                    if on_update:
                        on_update(deployment)
                    if deployment.HasField("delete_time"):
                        raise DeploymentFailed(deployment, f"deployment {deployment_id} was deleted")
                    if deployment.state in FAILURE_STATES:
                        raise DeploymentFailed(
                            deployment,
                            f"deployment {deployment_id} is {state_name(deployment.state)}: "
                            f"{deployment.status_message or 'no details'}",
                        )
                    if is_serving(deployment):
                        return deployment
            except grpc.RpcError as err:
                # With several controllers, one going away under the watch: watch on the next.
                lost = err.code() == grpc.StatusCode.UNAVAILABLE and isinstance(self._channel, FailoverChannel)
                if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED and not lost:
                    raise
            finally:
                cast(grpc.Future, call).cancel()
            # The stream ended (deadline, or the server closed it): re-check and resubscribe.
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def wait_until_production(
        self,
        model_id: str,
        deployment_id: str,
        timeout: float = 300.0,
        poll_interval: float = 0.25,
        environment: str = "production",
    ) -> res.Model:
        """Poll until `deployment_id` is the deployment of `environment` (production by default).
        Raises DeploymentFailed when the promotion was abandoned, SlipwayError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            model = self.get_model(model_id)
            if environment == "production":
                arrived = model.production_deployment_id == deployment_id
                on_its_way = model.promoting_deployment_id == deployment_id
            else:
                seen = self.get_deployment(deployment_id)
                arrived, on_its_way = seen.environment == environment, seen.promoting_environment == environment
            if arrived:
                return model
            if not on_its_way:
                deployment = self.get_deployment(deployment_id)
                detail = deployment.status_message or state_name(deployment.state)
                raise DeploymentFailed(
                    deployment, f"promotion of deployment {deployment_id} did not complete: {detail}"
                )
            if time.monotonic() >= deadline:
                raise SlipwayError(f"timed out after {timeout:g}s waiting for {deployment_id} to become {environment}")
            time.sleep(poll_interval)
