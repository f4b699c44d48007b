"""The runtime-API commands that take HAProxy from one state to the next (pure: no I/O).

Order matters for requests in flight: new servers are added and enabled first, then the
maps change (new routes find their servers ready; removed routes stop matching), and only
then are the servers that left put in maintenance — from that command's answer on, HAProxy
sends them no new request. They are freed later (proxy.py) once their sessions ended.

The HTTP backends (`h<N>`) hold dynamic servers (`add server`), named by the replica's token,
which `http-send-name-header` sends. The gRPC backends (`g<N>`) cannot: HAProxy 2.6 reuses no
h2 connection to a dynamic server (measured: one new connection per request, 3x the replica's
CPU). They hold pre-declared seats `s0..s<K-1>` instead (config.py), pointed at a replica with
`set server … addr`; the backend picks the seat with the fewest sessions itself and sends the
token `tokens.map` names for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.native.desired import MAPS, TOKENS, ProxyState, Server, ip_address

# (backend, server name) → the seat it holds (gRPC backends) or -1 (a dynamic server)
Retiring = Mapping[tuple[str, str], int]
# Dynamic servers get no idle-connection pool by default.
POOL = " pool-max-conn 64 pool-purge-delay 30s"


def seated(backend: str) -> bool:
    return backend.startswith("g")


def map_commands(
    map_dir: str,
    current: Mapping[str, Mapping[str, str]],
    desired: Mapping[str, Mapping[str, str]],
    names: tuple[str, ...] = MAPS,
):
    """(additions and changes, removals) for the maps `names` (every map by default)."""
    changes: list[str] = []
    removals: list[str] = []
    for name in names:
        path = f"{map_dir}/{name}"
        before, after = current.get(name, {}), desired.get(name, {})
        for key, value in after.items():
            if key not in before:
                changes.append(f"add map {path} {key} {value}")
            elif before[key] != value:
                changes.append(f"set map {path} {key} {value}")
        removals.extend(f"del map {path} {key}" for key in before if key not in after)
    return changes, removals


def assign_seats(current: ProxyState, desired: ProxyState, retiring: Retiring, seats: int) -> dict[str, dict[str, int]]:
    """Each gRPC backend's replicas in seats: a replica keeps its seat; a new one takes the lowest
    seat neither taken nor still draining. Replicas beyond `seats` get none (HAProxy skips them)."""
    result: dict[str, dict[str, int]] = {}
    for backend, servers in desired.servers.items():
        if not seated(backend):
            continue
        servers = {t: s for t, s in servers.items() if ip_address(s.address)}
        present = current.servers.get(backend, {})
        kept = {
            token: seat
            for token, seat in current.seats.get(backend, {}).items()
            if token in servers and present.get(token) == servers[token]
        }
        # Seats of replicas leaving now drain first, like those still draining from before.
        used = set(current.seats.get(backend, {}).values()) | {s for (b, _), s in retiring.items() if b == backend}
        free = iter(seat for seat in range(seats) if seat not in used)
        for token in servers:
            if token not in kept:
                seat = next(free, None)
                if seat is None:
                    break
                kept[token] = seat
        if kept:
            result[backend] = kept
    return result


def target_state(current: ProxyState, desired: ProxyState, retiring: Retiring, seats: int) -> ProxyState:
    """`desired` as HAProxy will hold it: gRPC replicas in seats (and their tokens in tokens.map);
    a dynamic server still draining under the same name is added again only once deleted."""
    assigned = assign_seats(current, desired, retiring, seats)
    servers: dict[str, dict[str, Server]] = {}
    for backend, wanted in desired.servers.items():
        if seated(backend):
            kept = {token: wanted[token] for token in assigned.get(backend, {})}
        else:
            present = current.servers.get(backend, {})
            kept = {
                name: server
                for name, server in wanted.items()
                if present.get(name) == server or (name not in present and (backend, name) not in retiring)
            }
        if kept:
            servers[backend] = kept
    maps = {name: dict(desired.maps.get(name, {})) for name in MAPS}
    maps[TOKENS] = {f"{backend}/{seat}": token for backend, held in assigned.items() for token, seat in held.items()}
    return ProxyState(maps, servers, assigned)


def transition(map_dir: str, current: ProxyState, target: ProxyState) -> tuple[list[str], dict[tuple[str, str], int]]:
    """The commands from `current` to `target` (from target_state), and the servers they put in
    maintenance (→ seat, or -1), to free once they have no sessions."""
    commands: list[str] = []
    retired: dict[tuple[str, str], int] = {}
    # A seat never pairs an address with another replica's token, even for one request: it is
    # in maintenance (freed seats are) while its address and its tokens.map entry change, and
    # enabled only after both; a retiring seat's entry goes only after its `disable`.
    enables: list[str] = []
    for backend, servers in target.servers.items():
        present = current.servers.get(backend, {})
        for name, server in servers.items():
            if present.get(name) == server and current.seats.get(backend, {}).get(name) == target.seats.get(
                backend, {}
            ).get(name):
                continue
            if seated(backend):
                seat = target.seats[backend][name]
                host, port = ip_address(server.address) or ("", 0)
                commands.append(f"set server {backend}/s{seat} addr {host} port {port}")
                enables.append(f"enable server {backend}/s{seat}")
            else:
                commands.append(f"add server {backend}/{name} {server.address}{POOL}")
                commands.append(f"enable server {backend}/{name}")
    routes = tuple(name for name in MAPS if name != TOKENS)
    token_changes, token_removals = map_commands(map_dir, current.maps, target.maps, (TOKENS,))
    changes, removals = map_commands(map_dir, current.maps, target.maps, routes)
    commands += token_changes + enables + changes + removals
    for backend, servers in current.servers.items():
        wanted = target.servers.get(backend, {})
        for name, server in servers.items():
            if seated(backend):
                seat = current.seats[backend][name]
                if wanted.get(name) != server or target.seats.get(backend, {}).get(name) != seat:
                    commands.append(f"disable server {backend}/s{seat}")
                    retired[(backend, name)] = seat
            elif wanted.get(name) != server:
                commands.append(f"disable server {backend}/{name}")
                retired[(backend, name)] = -1
    return commands + token_removals, retired
