"""What a lifecycle mutation returns, and how it is kept: a call with a request_id stores its
result in the same transaction, so a retry gets the first answer; the fingerprint tells a
retry from a reuse of the same request_id for another request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from controller.domain import AutoscalingSettings, Deployment, Kind, Model, State
from controller.environments import Environment
from controller.packages import FilePatch


@dataclass(frozen=True)
class Result:
    """What a mutation returns (and what a retried call with the same request_id gets)."""

    model: Model | None = None
    deployment: Deployment | None = None
    # CreateDeployment: the push created the model. PromoteDeployment: production switched.
    # PatchDeployment: the patch bumped the revision (the replicas restart).
    flag: bool = False
    # CreateDeployment: config.yaml keys that are not honoured (see controller/compat.py).
    warnings: tuple[str, ...] = ()
    # The environment calls (controller/environment_ops.py).
    environment: Environment | None = None


def fingerprint(method: str, request: tuple) -> str:
    """What identifies a request, for telling a retry from a reuse of its request_id
    (file contents by their hash: a patch may carry megabytes)."""

    def canonical(part: object) -> object:
        if isinstance(part, dict):
            return sorted(part.items())
        if isinstance(part, FilePatch):
            return part.path, hashlib.sha256(part.content).hexdigest(), part.delete
        if isinstance(part, (list, tuple)):
            return [canonical(item) for item in part]
        return part

    return hashlib.sha256(repr((method, canonical(request))).encode()).hexdigest()


def encode_result(result: Result) -> str:
    return json.dumps(dataclasses.asdict(result), default=lambda v: v.value)


def _decode_environment(data: dict | None) -> Environment | None:
    if not data:
        return None
    settings = data["autoscaling"]
    return Environment(**{**data, "autoscaling": AutoscalingSettings(**settings) if settings else None})


def decode_result(text: str) -> Result:
    data = json.loads(text)
    model = Model(**data["model"]) if data["model"] else None
    deployment = None
    if data["deployment"]:
        d = data["deployment"]
        deployment = Deployment(
            **{
                **d,
                "kind": Kind(d["kind"]),
                "state": State(d["state"]),
                "autoscaling": AutoscalingSettings(**d["autoscaling"]),
            }
        )
    return Result(
        model=model,
        deployment=deployment,
        flag=data["flag"],
        warnings=tuple(data.get("warnings") or ()),
        environment=_decode_environment(data.get("environment")),
    )
