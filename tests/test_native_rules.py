"""The native data plane's pure parts: desired HAProxy state from a route table, the runtime
commands between two states, and the rendered configuration (checked by haproxy -c)."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from pki import generate

from gateway.native import commands, config, desired
from gateway.native.desired import ProxyState, Server, Slots
from gateway.native.proxy import find_haproxy
from gateway.routing import RouteIndex
from slipway import limits
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import resources_pb2 as r
from slipway.v1 import route_service_pb2 as rt


def endpoint(name: str, http: bool = True) -> rt.Endpoint:
    return rt.Endpoint(
        replica_id=name,
        address=f"127.0.0.1:{len(name)}1",
        token=f"t-{name}",
        http_address=f"127.0.0.1:{len(name)}2" if http else "",
    )


def index(*, weights=(("A", 1),), endpoints=None, keys=(), active=True, state=r.DEPLOYMENT_STATE_ACTIVE) -> RouteIndex:
    endpoints = endpoints if endpoints is not None else {"A": [endpoint("a")], "B": [endpoint("b", http=False)]}
    table = RouteIndex()
    table.apply(
        rt.WatchRoutesResponse(
            version=1,
            reset=True,
            models=[
                rt.ModelRoute(
                    model_id="M",
                    model_name="m",
                    development_deployment_id="B",
                    environments=[
                        rt.EnvironmentRoute(
                            name="production",
                            deployments=[rt.WeightedDeployment(deployment_id=d, weight=w) for d, w in weights],
                        )
                    ],
                )
            ],
            deployments=[
                rt.DeploymentRoute(deployment_id=d, model_id="M", active=active, state=state, endpoints=e)
                for d, e in endpoints.items()
            ],
            api_keys=list(keys),
        )
    )
    return table


def state_of(table: RouteIndex, now: float = 0.0, require_keys: bool = False, slots: Slots | None = None):
    return desired.desired_state(table, now, slots or Slots(4), {}, require_keys)


@pytest.mark.parametrize(
    ("key", "grpc", "http"),
    [
        ("/model/M/production", "0", "0"),
        ("/model/m/production", "0", "0"),
        ("/model/m/environments/production", "0", "0"),
        ("/model/m/development", "1", None),  # B has no HTTP predict route: HTTP stays on Python
        ("/model/M/environments/development", "1", None),
        ("/model/m/deployment/A", "0", "0"),
        ("/model//deployment/B", "1", None),
        ("/model/m/deployment/X", None, None),
    ],
)
def test_every_alias_maps_to_its_deployments_slot(key, grpc, http):
    state, unplaced, _ = state_of(index())
    assert state.maps[desired.GRPC].get(key) == grpc
    assert state.maps[desired.HTTP].get(key) == http
    assert unplaced == []


@pytest.mark.parametrize(
    ("weights", "first", "alt", "share"),
    [
        ((("A", 1),), "0", None, None),
        ((("B", 30), ("A", 70)), "1", "0", "3000"),
        ((("B", 1), ("A", 2)), "1", "0", "3334"),  # ceil: bucket b goes first when b * 3 < 1 * 10000
        ((("B", 0), ("A", 5)), "0", None, None),  # a zero weight is no split
        ((("A", 0),), None, None, None),  # nothing with weight: Python refuses
    ],
)
def test_weighted_environments(weights, first, alt, share):
    state, _, _ = state_of(index(weights=weights))
    key = "/model/M/production"
    assert state.maps[desired.GRPC].get(key) == first
    assert state.maps[desired.GRPC_ALT].get(key) == alt
    assert state.maps[desired.SPLIT].get(key) == share


@pytest.mark.parametrize(
    "table",
    [
        index(endpoints={"A": []}),  # scaled to zero: the activator (Python) takes it
        index(active=False),
        index(endpoints={"A": [rt.Endpoint(address="x:1", token="bad token")]}),
    ],
)
def test_no_ready_replica_means_the_python_path(table):
    state, _, _ = state_of(table)
    assert "/model/M/production" not in state.maps[desired.GRPC]
    assert all(not servers for servers in state.servers.values())


def test_slots_run_out_and_are_reused_only_once_free():
    slots = Slots(1)
    endpoints = {"A": [endpoint("a")], "B": [endpoint("b")]}
    state, unplaced, _ = state_of(index(endpoints=endpoints), slots=slots)
    assert unplaced == ["B"] and slots.owner == {"A": 0}
    assert state_of(index(endpoints=endpoints), slots=slots)[1] == []  # logged once
    assert slots.assign(["B"], busy=[0]) == [] and slots.owner == {}  # A's servers still drain
    slots.assign(["B"], busy=[])
    assert slots.owner == {"B": 0}


def key(key_id: str, **fields) -> rt.ApiKeyRoute:
    return rt.ApiKeyRoute(key_id=key_id, key_sha256=hashlib.sha256(key_id.encode()).digest(), **fields)


def test_only_valid_inference_keys_are_in_the_maps():
    keys = [
        key("all", scope=ks.KEY_SCOPE_DEPLOY),
        key("some", scope=ks.KEY_SCOPE_INFERENCE, model_ids=["M"]),
        key("revoked", scope=ks.KEY_SCOPE_ADMIN, revoked=True),
        key("metrics", scope=ks.KEY_SCOPE_METRICS),
        key("expired", scope=ks.KEY_SCOPE_INFERENCE, expire_time=10),
        key("later", scope=ks.KEY_SCOPE_INFERENCE, expire_time=30),
    ]
    state, _, next_expiry = state_of(index(keys=keys), now=20, require_keys=True)
    digest = {k.key_id: k.key_sha256.hex() for k in keys}
    assert state.maps[desired.KEYS] == {digest["all"]: "all", digest["some"]: "some", digest["later"]: "all"}
    assert state.maps[desired.KEY_MODELS] == {f"{digest['some']}/M": "1"}
    assert next_expiry == 30
    assert state.maps[desired.MODEL]["/model/m/production"] == "M"
    assert state_of(index(keys=keys), require_keys=False)[0].maps[desired.KEYS] == {}


A = Server("t-a", "127.0.0.1:1")
B = Server("t-b", "127.0.0.1:2")
C = Server("t-c", "127.0.0.1:3")


def maps(**contents) -> dict[str, dict[str, str]]:
    return {**ProxyState().maps, **{f"{name}.map": value for name, value in contents.items()}}


@pytest.mark.parametrize(
    ("current", "wanted", "retiring", "expected", "retired"),
    [
        (  # a gRPC replica takes the first seat; its token goes in tokens.map
            ProxyState(),
            ProxyState(maps=maps(grpc={"/k": "0"}), servers={"g0": {"t-a": A}}),
            {},
            [  # the seat is enabled only once it has both its address and its token
                "set server g0/s0 addr 127.0.0.1 port 1",
                "add map D/tokens.map g0/0 t-a",
                "enable server g0/s0",
                "add map D/grpc.map /k 0",
            ],
            {},
        ),
        (  # added first, then maps, then maintenance (a leaving seat's token after it); a
            # draining seat is not reused
            ProxyState(
                maps=maps(grpc={"/k": "0"}, tokens={"g0/0": "t-a"}),
                servers={"g0": {"t-a": A}},
                seats={"g0": {"t-a": 0}},
            ),
            ProxyState(maps=maps(grpc={"/k": "0"}), servers={"g0": {"t-b": B}, "h0": {"t-c": C}}),
            {("g0", "t-old"): 1},
            [
                "set server g0/s2 addr 127.0.0.1 port 2",
                "add server h0/t-c 127.0.0.1:3" + commands.POOL,
                "enable server h0/t-c",
                "add map D/tokens.map g0/2 t-b",
                "enable server g0/s2",
                "disable server g0/s0",
                "del map D/tokens.map g0/0",
            ],
            {("g0", "t-a"): 0},
        ),
        (  # a dynamic server still draining under that name is added back once deleted
            ProxyState(maps=maps(http={"/k": "0"})),
            ProxyState(servers={"h0": {"t-a": A}}),
            {("h0", "t-a"): -1},
            ["del map D/http.map /k"],
            {},
        ),
    ],
)
def test_transitions(current, wanted, retiring, expected, retired):
    target = commands.target_state(current, wanted, retiring, seats=4)
    assert commands.transition("D", current, target) == (expected, retired)
    assert commands.transition("D", target, commands.target_state(target, wanted, retiring, seats=4)) == ([], {})


def test_replicas_beyond_the_seats_get_none():
    wanted = ProxyState(servers={"g0": {"t-a": A, "t-b": B, "t-c": C}})
    target = commands.target_state(ProxyState(), wanted, {}, seats=2)
    assert target.seats == {"g0": {"t-a": 0, "t-b": 1}} and set(target.servers["g0"]) == {"t-a", "t-b"}


@pytest.mark.skipif(find_haproxy() is None, reason="haproxy is not installed (make haproxy-bin)")
@pytest.mark.parametrize("require_keys", [False, True])
@pytest.mark.parametrize("tls", [False, True])
def test_the_configuration_is_valid(tmp_path, require_keys, tls):
    for name in desired.MAPS:
        (tmp_path / name).touch()
    for name, page in config.error_pages().items():
        (tmp_path / name).write_bytes(page)
    pem = None
    if tls:
        pki = generate(tmp_path)
        pem = str(tmp_path / "tls.pem")
        (tmp_path / "tls.pem").write_bytes(pki.cert.read_bytes() + pki.key.read_bytes())
    rendered = config.render(
        config.ProxyConfig(
            str(tmp_path),
            "127.0.0.1:1",
            "127.0.0.1:1",
            "127.0.0.1:1",
            "127.0.0.1:2",
            3,
            1000,
            require_keys,
            600,
            15,
            15,
            300,
            700,
            512,
            1000,
            tls_pem=pem,
        )
    )
    (tmp_path / "haproxy.cfg").write_text(rendered)
    assert ("key_ok" in rendered) is require_keys
    result = subprocess.run(
        [find_haproxy() or "", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_fast_path_tells_the_replica_the_gateways_limit_and_no_caller_can():
    rendered = config.render(
        config.ProxyConfig(
            "/run", "fd@5", "fd@6", "127.0.0.1:1", "127.0.0.1:2", 1, 2048, False, 60, 15, 15, 30, 70, 2, 9
        )
    )
    sections = {block.split("\n", 1)[0]: block for block in rendered.split("\n\n")}
    for backend in ("backend g0", "backend h0"):
        assert f"http-request set-header {limits.GATEWAY_LIMIT_HEADER} 2048" in sections[backend]
    for frontend in ("frontend grpc_in", "frontend http_in"):
        assert f"http-request del-header {limits.GATEWAY_LIMIT_HEADER}" in sections[frontend]
    # A request on a connection past the cap gets the Python gateway's 503.
    assert "TOO_MANY_CONNECTIONS" in sections["frontend http_in"]


@pytest.mark.parametrize(
    ("value", "limit"),
    [("2048", 2048), (None, None), ("", None), ("-1", None), ("0", None), ("1e9", None), ("٣", None)],
)
def test_the_gateways_limit_is_read_only_from_a_plain_size(value, limit):
    assert limits.gateway_limit(value) == limit
