"""The runtime-API commands that take HAProxy from one state to the next (pure: no I/O).

Order matters for requests in flight: new servers are added and enabled first, then the
maps change (new routes find their servers ready; removed routes stop matching), and only
then are the servers that left put in maintenance — from that command's answer on, HAProxy
sends them no new request. They are deleted later (`drained`) once their sessions ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from gateway.native.desired import MAPS, ProxyState, Server


def map_commands(map_dir: str, current: Mapping[str, Mapping[str, str]], desired: Mapping[str, Mapping[str, str]]):
    """(additions and changes, removals) for every map."""
    changes: list[str] = []
    removals: list[str] = []
    for name in MAPS:
        path = f"{map_dir}/{name}"
        before, after = current.get(name, {}), desired.get(name, {})
        for key, value in after.items():
            if key not in before:
                changes.append(f"add map {path} {key} {value}")
            elif before[key] != value:
                changes.append(f"set map {path} {key} {value}")
        removals.extend(f"del map {path} {key}" for key in before if key not in after)
    return changes, removals


def server_line(backend: str, server: Server) -> str:
    proto = " proto h2" if backend.startswith("g") else ""
    return f"add server {backend}/{server.name} {server.address}{proto}"


def transition(
    map_dir: str, current: ProxyState, desired: ProxyState, retiring: Set[tuple[str, str]] = frozenset()
) -> tuple[list[str], list[tuple[str, str]]]:
    """The commands from `current` to `desired`, and the servers (backend, name) they put in
    maintenance, to delete once they have no sessions. A server still `retiring` (in maintenance,
    not yet deleted) is added again only once it is deleted (a later transition)."""
    commands: list[str] = []
    retired: list[tuple[str, str]] = []
    for backend, servers in desired.servers.items():
        present = current.servers.get(backend, {})
        for name, server in servers.items():
            if name not in present and (backend, name) not in retiring:
                commands.append(server_line(backend, server))
                commands.append(f"enable server {backend}/{name}")
    changes, removals = map_commands(map_dir, current.maps, desired.maps)
    commands += changes + removals
    for backend, servers in current.servers.items():
        wanted = desired.servers.get(backend, {})
        for name, server in servers.items():
            if wanted.get(name) != server:
                commands.append(f"disable server {backend}/{name}")
                retired.append((backend, name))
    return commands, retired


def applied(current: ProxyState, desired: ProxyState, retiring: Set[tuple[str, str]] = frozenset()) -> ProxyState:
    """The state HAProxy holds once `transition(current, desired, retiring)` ran."""
    servers: dict[str, dict[str, Server]] = {}
    for backend, wanted in desired.servers.items():
        present = current.servers.get(backend, {})
        kept = {
            name: server
            for name, server in wanted.items()
            if present.get(name) == server or (name not in present and (backend, name) not in retiring)
        }
        if kept:
            servers[backend] = kept
    return ProxyState({name: dict(desired.maps.get(name, {})) for name in MAPS}, servers)
