"""What HAProxy should hold for one route table (pure: no I/O).

Route keys are request paths without `/predict` — `/model/<id-or-name>/production`,
`/model/<m>/development`, `/model/<m>/environments/<e>`, `/model/<m>/deployment/<d>` (and
`/model//deployment/<d>` for a gRPC call naming a deployment only) — with every alias
RouteIndex.resolve accepts. The HTTP frontend strips `/predict` from the path; the gRPC one
builds the same key from the routing metadata (slipway/data_plane.py).

Each deployment with a ready replica owns a slot N: backend `g<N>` (h2 to Endpoint.address)
and `h<N>` (HTTP/1.1 to Endpoint.http_address). Servers are named by the replica's token,
which `http-send-name-header` sends as `x-slipway-replica-token`. A key whose deployment has
no slot (no ready replica: scaled to zero, waking, failed) maps to nothing, and the request
goes to the Python gateway, which waits, wakes, or refuses exactly as it does alone.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway import traffic_split
from gateway.routing import DEVELOPMENT, FAILED_STATES, PRODUCTION, RouteIndex
from slipway.keys import Scope
from slipway.v1 import route_service_pb2 as rt

# The maps the configuration declares (config.py), by file name.
GRPC = "grpc.map"  # key → slot of the deployment taking the lowest buckets (or the only one)
GRPC_ALT = "grpc_alt.map"  # key → slot of the deployment taking the rest of the buckets
HTTP = "http.map"  # as GRPC, for deployments with an HTTP predict route (Endpoint.http_address)
HTTP_ALT = "http_alt.map"
SPLIT = "split.map"  # key → buckets (of traffic_split.BUCKETS) the first deployment owns
MODEL = "model.map"  # key → model ID (for keys limited to some models)
KEYS = "keys.map"  # sha256 hex of a valid inference key → "all" or "some" (limited to models)
KEY_MODELS = "keymodels.map"  # "<sha256 hex>/<model ID>" → "1"
TOKENS = "tokens.map"  # "g<N>/<seat>" → the token of the replica in that seat (commands.py)
MAPS = (GRPC, GRPC_ALT, HTTP, HTTP_ALT, SPLIT, MODEL, KEYS, KEY_MODELS, TOKENS)
NO_SLOT = "-"  # a map value (the default) sending the request to the Python gateway
INFERENCE_SCOPES = frozenset({Scope.ADMIN, Scope.DEPLOY, Scope.INFERENCE})
# Characters a server name, map key or map value may hold on the runtime API (one line,
# space-separated words): anything else stays on the Python path.
SAFE = re.compile(r"[A-Za-z0-9._:@/=+-]{1,200}")


@dataclass(frozen=True)
class Server:
    name: str  # the replica's token (sent as x-slipway-replica-token)
    address: str  # host:port


@dataclass
class ProxyState:
    """Everything the runtime API changes: map contents and the servers of each backend."""

    maps: dict[str, dict[str, str]] = field(default_factory=lambda: {name: {} for name in MAPS})
    # backend name (g<N>, h<N>) → server name (the replica's token) → server
    servers: dict[str, dict[str, Server]] = field(default_factory=dict)
    # g<N> → token → seat: the gRPC backends' servers are pre-declared seats s0..s<K-1> (commands.py)
    seats: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Slots:
    """Which deployment owns which slot pair; a slot is reused only once its servers are gone."""

    count: int
    owner: dict[str, int] = field(default_factory=dict)  # deployment ID → slot
    warned: set[str] = field(default_factory=set)  # deployments logged as having no free slot

    def assign(self, deployment_ids: Iterable[str], busy: Iterable[int]) -> list[str]:
        """Give each deployment a slot (keeping the ones they hold); free the slots of the others
        unless `busy` (they still have servers). Returns the deployments newly left without one."""
        wanted = list(dict.fromkeys(deployment_ids))
        held = set(busy)
        for deployment_id in [d for d in self.owner if d not in wanted]:
            del self.owner[deployment_id]
        taken = set(self.owner.values()) | held
        unplaced = []
        free = (n for n in range(self.count) if n not in taken)
        for deployment_id in wanted:
            if deployment_id in self.owner:
                continue
            slot = next(free, None)
            if slot is None:
                if deployment_id not in self.warned:
                    unplaced.append(deployment_id)
                    self.warned.add(deployment_id)
                continue
            self.owner[deployment_id] = slot
        return unplaced


def servable(deployment: rt.DeploymentRoute) -> bool:
    return deployment.active and not (deployment.state in FAILED_STATES and not deployment.endpoints)


def ip_address(address: str) -> tuple[str, int] | None:
    """(ip, port) of `host:port` when the host is an IP literal (HAProxy resolves no names at run time)."""
    host, _, port = address.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        return None
    return (host.strip("[]"), number) if 0 < number < 65536 else None


def grpc_servers(deployment: rt.DeploymentRoute) -> dict[str, Server]:
    return {
        e.token: Server(e.token, e.address)
        for e in deployment.endpoints
        if SAFE.fullmatch(e.token) and ip_address(e.address)
    }


def http_servers(deployment: rt.DeploymentRoute) -> dict[str, Server]:
    return {
        e.token: Server(e.token, e.http_address)
        for e in deployment.endpoints
        if SAFE.fullmatch(e.token) and ip_address(e.http_address)
    }


def first_buckets(deployments: list[rt.WeightedDeployment]) -> int:
    """Buckets of traffic_split.BUCKETS the first of two weighted deployments owns (the same
    rule as traffic_split.choose: bucket b goes to the first when b * total < weight * BUCKETS)."""
    total = sum(d.weight for d in deployments)
    return -(-deployments[0].weight * traffic_split.BUCKETS // total)  # ceil, in integers


def route_targets(index: RouteIndex) -> dict[str, tuple[str, list[tuple[str, int]]]]:
    """key → (model ID, [(deployment ID, weight)]) for every key Python would route (one or two
    deployments; an environment with more, or none with weight, is left to Python)."""
    targets: dict[str, tuple[str, list[tuple[str, int]]]] = {}
    for model in index.models.values():
        refs = [r for r in dict.fromkeys((model.model_id, model.model_name)) if r and SAFE.fullmatch(r)]
        environments: dict[str, list[tuple[str, int]]] = {}
        for environment in model.environments:
            weighted = [(d.deployment_id, d.weight) for d in environment.deployments]
            if sum(w for _, w in weighted) and len(weighted) <= 2:
                environments[environment.name] = (
                    weighted
                    if len(weighted) == 2 and all(w for _, w in weighted)
                    else [next((d, w) for d, w in weighted if w)]
                )
        environments.pop(DEVELOPMENT, None)  # `development` always names the development deployment
        if model.development_deployment_id:
            environments[DEVELOPMENT] = [(model.development_deployment_id, 1)]
        owned = [d for d in index.deployments.values() if d.model_id == model.model_id]
        for ref in refs:
            for name, weighted in environments.items():
                if not SAFE.fullmatch(name):
                    continue
                targets[f"/model/{ref}/environments/{name}"] = (model.model_id, weighted)
                if name in (PRODUCTION, DEVELOPMENT):
                    targets[f"/model/{ref}/{name}"] = (model.model_id, weighted)
            for deployment in owned:
                if SAFE.fullmatch(deployment.deployment_id):
                    targets[f"/model/{ref}/deployment/{deployment.deployment_id}"] = (
                        model.model_id,
                        [(deployment.deployment_id, 1)],
                    )
    for deployment in index.deployments.values():
        if SAFE.fullmatch(deployment.deployment_id):
            targets[f"/model//deployment/{deployment.deployment_id}"] = (
                deployment.model_id,
                [(deployment.deployment_id, 1)],
            )
    return targets


def valid_keys(index: RouteIndex, now: float, require_keys: bool) -> tuple[dict[str, str], dict[str, str], float]:
    """(keys map, key-models map, the next expiry after `now`: re-sync then; inf when none)."""
    keys: dict[str, str] = {}
    key_models: dict[str, str] = {}
    next_expiry = math.inf
    if not require_keys:
        return keys, key_models, next_expiry
    for record in index.api_keys.values():
        if record.revoked or record.scope not in INFERENCE_SCOPES:
            continue
        if record.expire_time is not None:
            if now >= record.expire_time:
                continue
            next_expiry = min(next_expiry, record.expire_time)
        digest = record.key_sha256.hex()
        limited = record.scope is Scope.INFERENCE and bool(record.model_ids)
        keys[digest] = "some" if limited else "all"
        if limited:
            for model_id in record.model_ids:
                key_models[f"{digest}/{model_id}"] = "1"
    return keys, key_models, next_expiry


def desired_state(
    index: RouteIndex, now: float, slots: Slots, busy: Mapping[int, bool], require_keys: bool
) -> tuple[ProxyState, list[str], float]:
    """The state HAProxy should hold for `index` at time `now`, the deployments newly left on the
    Python path for want of a free slot (to log once), and when to compute it again (a key expires)."""
    ready = {d.deployment_id: d for d in index.deployments.values() if servable(d) and grpc_servers(d)}
    unplaced = slots.assign(sorted(ready), [slot for slot, has in busy.items() if has])
    state = ProxyState()
    for deployment_id, slot in slots.owner.items():
        state.servers[f"g{slot}"] = grpc_servers(ready[deployment_id])
        state.servers[f"h{slot}"] = http_servers(ready[deployment_id])
    maps = state.maps
    for key, (model_id, weighted) in route_targets(index).items():
        if require_keys:  # model.map serves only the check of keys limited to models
            maps[MODEL][key] = model_id
        grpc_slots = [_slot(slots, ready, d, grpc=True) for d, _ in weighted]
        http_slots = [_slot(slots, ready, d, grpc=False) for d, _ in weighted]
        if len(weighted) == 2:
            maps[SPLIT][key] = str(
                first_buckets([rt.WeightedDeployment(deployment_id=d, weight=w) for d, w in weighted])
            )
        for name, alt, found in ((GRPC, GRPC_ALT, grpc_slots), (HTTP, HTTP_ALT, http_slots)):
            if found[0] != NO_SLOT:
                maps[name][key] = found[0]
            if len(found) == 2 and found[1] != NO_SLOT:
                maps[alt][key] = found[1]
    maps[KEYS], maps[KEY_MODELS], next_expiry = valid_keys(index, now, require_keys)
    return state, unplaced, next_expiry


def _slot(slots: Slots, ready: Mapping[str, rt.DeploymentRoute], deployment_id: str, grpc: bool) -> str:
    slot = slots.owner.get(deployment_id)
    if slot is None:
        return NO_SLOT
    servers = grpc_servers(ready[deployment_id]) if grpc else http_servers(ready[deployment_id])
    return str(slot) if servers else NO_SLOT
