"""Which deployment of an environment takes a request (pure: no I/O).

An environment routes to one deployment, or during a rolling promotion to two with
weights. The choice is a hash of the request ID: across requests the shares follow
the weights, and the same request ID — a caller retrying with its own `X-Request-Id`,
or the gateway retrying a request that never reached a replica — always lands on the
same deployment, so a retry cannot cross from the candidate to the previous one.

The hash is CRC-32 reduced to BUCKETS buckets, in integers: the native data plane's
HAProxy computes the same (`crc32,mod(BUCKETS)`, gateway/native/), so a request ID lands
on the same deployment whichever data plane takes it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from slipway.v1 import route_service_pb2 as rt

# Buckets the hash is reduced to: fine enough for weights given in percent or basis points.
BUCKETS = 10_000


def bucket_index(request_id: str) -> int:
    """The request's bucket in [0, BUCKETS), uniform over request IDs."""
    return zlib.crc32(request_id.encode()) % BUCKETS


def bucket_of(request_id: str) -> float:
    """The request's place in [0, 1), uniform over request IDs."""
    return bucket_index(request_id) / BUCKETS


def choose(deployments: Sequence[rt.WeightedDeployment], request_id: str) -> str:
    """The deployment ID that takes `request_id`; "" when the environment has none with weight.
    Bucket b goes to the first deployment whose cumulative weight w has b * total < w * BUCKETS."""
    total = sum(d.weight for d in deployments)
    if total == 0:
        return ""
    if len(deployments) == 1:
        return deployments[0].deployment_id
    point = bucket_index(request_id) * total
    cumulative = 0
    for deployment in deployments:
        cumulative += deployment.weight
        if deployment.weight and point < cumulative * BUCKETS:
            return deployment.deployment_id
    return next(d.deployment_id for d in reversed(deployments) if d.weight)
