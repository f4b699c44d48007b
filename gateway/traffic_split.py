"""Which deployment of an environment takes a request (pure: no I/O).

An environment routes to one deployment, or during a rolling promotion to two with
weights. The choice is a hash of the request ID: across requests the shares follow
the weights, and the same request ID — a caller retrying with its own `X-Request-Id`,
or the gateway retrying a request that never reached a replica — always lands on the
same deployment, so a retry cannot cross from the candidate to the previous one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from slipway.v1 import route_service_pb2 as rt

# Buckets the hash is reduced to: fine enough for weights given in percent or basis points.
BUCKETS = 1 << 32


def bucket_of(request_id: str) -> float:
    """The request's place in [0, 1), uniform over request IDs."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % BUCKETS) / BUCKETS


def choose(deployments: Sequence[rt.WeightedDeployment], request_id: str) -> str:
    """The deployment ID that takes `request_id`; "" when the environment has none with weight."""
    total = sum(d.weight for d in deployments)
    if total == 0:
        return ""
    if len(deployments) == 1:
        return deployments[0].deployment_id
    point = bucket_of(request_id) * total
    for deployment in deployments:
        if point < deployment.weight:
            return deployment.deployment_id
        point -= deployment.weight
    return next(d.deployment_id for d in reversed(deployments) if d.weight)
