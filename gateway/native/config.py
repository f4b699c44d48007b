"""haproxy.cfg for the native data plane (pure: no I/O).

Two frontends on the public ports, both HTTP mode: `grpc_in` (h2, `proto h2`; TLS with ALPN h2
when the gateway has TLS) and `http_in` (HTTP/1.1, TLS when configured). The fast path (see
desired.py for the keys and maps) goes to slot backends `g<N>`/`h<N>`; every other request to
`py_grpc`/`py_http`, the Python gateway on its internal loopback ports. Nothing is ever reloaded:
servers and maps change through the runtime API only (commands.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.native import access_log, desired
from slipway import data_plane
from slipway.limits import GATEWAY_LIMIT_HEADER
from slipway.request_ids import MAX_REQUEST_ID_CHARS

PREDICT_METHODS = ("/slipway.v1.InferenceService/Predict", "/slipway.v1.InferenceService/PredictStream")
HTTP_PREDICT_PATH = r"^/model/[^/]+/(production|development|environments/[^/]+|deployment/[^/]+)/predict$"


@dataclass(frozen=True)
class ProxyConfig:
    run_dir: str
    grpc_bind: str  # e.g. "fd@5" (a socket the gateway bound) or "127.0.0.1:7200"
    http_bind: str
    python_grpc: str  # host:port of the Python gateway's internal gRPC server
    python_http: str
    slots: int
    max_request_bytes: int
    require_keys: bool
    request_timeout_seconds: float
    header_timeout_seconds: float  # HttpLimits.idle_timeout_seconds (a request's line and headers)
    http_idle_seconds: float  # HttpLimits.idle_timeout_seconds
    grpc_idle_seconds: float  # GrpcLimits.max_connection_idle_seconds
    python_timeout_seconds: float  # a request the Python gateway holds (waits for a wake, then forwards)
    max_http_connections: int
    max_grpc_connections: int
    tls_pem: str | None = None  # certificate chain and key in one PEM file
    connect_timeout_seconds: float = 1.0
    retries: int = 2
    threads: int = 1
    seats: int = 8  # replicas of one deployment the gRPC fast path spreads over (commands.py)
    # HttpLimits.body_idle_timeout_seconds: a client silent this long within a request (its body
    # stalled) is disconnected, also after the Python gateway has answered it 408.
    body_idle_seconds: float = 10.0


def _ms(seconds: float) -> str:
    return f"{max(int(seconds * 1000), 1)}ms"


# HAProxy's own refusals, in the gateway's shapes: (status, reason text, gRPC code, ErrorInfo-ish reason, message)
ERRORS = (
    (400, "Bad Request", 13, "INTERNAL", "BAD_REQUEST", "the request could not be parsed"),
    (408, "Request Timeout", 4, "DEADLINE_EXCEEDED", "REQUEST_TIMEOUT", "the request was not received in time"),
    (500, "Internal Server Error", 13, "INTERNAL", "PROXY_ERROR", "the proxy failed"),
    (502, "Bad Gateway", 14, "UNAVAILABLE", "REPLICA_FAILED", "the replica answered no valid response"),
    (503, "Service Unavailable", 14, "UNAVAILABLE", "NO_READY_REPLICA", "no replica could take the request"),
    (504, "Gateway Timeout", 4, "DEADLINE_EXCEEDED", "REPLICA_TIMEOUT", "the replica did not answer in time"),
)


def error_pages() -> dict[str, bytes]:
    """File name → raw HTTP response, for each `errorfile` (JSON for HTTP; for gRPC a
    trailers-only answer with grpc-status, which every gRPC client reads as the call's status)."""
    pages = {}
    for status, text, grpc_status, code, reason, message in ERRORS:
        body = json.dumps({"error": {"code": code, "reason": reason, "message": message}}).encode()
        pages[f"http_{status}.http"] = (
            f"HTTP/1.1 {status} {text}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "cache-control: no-cache\r\nconnection: close\r\n\r\n"
        ).encode() + body
        pages[f"grpc_{status}.http"] = (
            "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
            f"grpc-status: {grpc_status}\r\ngrpc-message: {reason}: {message.replace(' ', '%20')}\r\n"
            "content-length: 0\r\n\r\n"
        ).encode()
    return pages


# HAProxy writes HTTP/1.1 header names in lower case; these keep the case the Python gateway
# (aiohttp) sends, for clients that compare names case-sensitively.
HEADER_CASES = (
    "Content-Length",
    "Content-Type",
    "Transfer-Encoding",
    "Connection",
    "Date",
    "Server",
    "Allow",
    "WWW-Authenticate",
    "Retry-After",
    "X-Slipway-Request-Id",
)


def _too_many_connections(limit: int) -> str:
    """A request on a connection beyond the HTTP connection limit: the Python gateway's 503."""
    body = json.dumps(
        {
            "error": {
                "code": "UNAVAILABLE",
                "reason": "TOO_MANY_CONNECTIONS",
                "message": f"the gateway already has {limit} open HTTP connections, its limit; retry later",
            }
        }
    )
    return (
        f"http-request return status 503 content-type application/json string '{body}' "
        f"hdr connection close if {{ fe_conn gt {limit} }}"
    )


def _request_id_rules() -> list[str]:
    valid = rf"^[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}$"
    return [
        "http-request del-header x-slipway-replica-token",
        f"http-request del-header {GATEWAY_LIMIT_HEADER}",
        'http-request set-var-fmt(txn.rid) "req-%[uuid]"',
        f"http-request set-var(txn.rid) req.fhdr(x-request-id,1) if {{ req.fhdr(x-request-id,1) -m reg {valid} }}",
        "http-request set-header x-request-id %[var(txn.rid)]",
        "http-request set-header x-forwarded-for %[src]",
        "http-after-response set-header x-slipway-request-id %[var(txn.rid)]",
    ]


def _choice_rules(kind: str) -> list[str]:
    """txn.slot from txn.key: the first deployment's slot, or the second's for buckets past the
    first's share (the request ID's CRC-32, as gateway/traffic_split.py)."""
    first, alt = (desired.GRPC, desired.GRPC_ALT) if kind == "grpc" else (desired.HTTP, desired.HTTP_ALT)
    return [
        f"http-request set-var(txn.slot) var(txn.key),map_str({{dir}}/{first},{desired.NO_SLOT}) if {{ var(txn.key) -m found }}",
        "http-request set-var(txn.bucket) var(txn.rid),crc32,mod(10000) if { var(txn.slot) -m found }",
        f"http-request set-var(txn.share) var(txn.key),map_str_int({{dir}}/{desired.SPLIT},10000) if {{ var(txn.slot) -m found }}",
        f"http-request set-var(txn.slot) var(txn.key),map_str({{dir}}/{alt},{desired.NO_SLOT}) "
        "if { var(txn.slot) -m found } { var(txn.bucket),sub(txn.share) -m int ge 0 }",
    ]


def _key_rules(require_keys: bool) -> tuple[list[str], str]:
    """Rules setting acl `key_ok`, and the condition to add to the fast path."""
    if not require_keys:
        return [], ""
    return [
        "acl key_form req.fhdr(authorization) -m reg -i '^(api-key|bearer) +[^ ]+$'",
        "http-request set-var(txn.khash) req.fhdr(authorization),word(2,' '),sha2(256),hex,lower if key_form",
        f"http-request set-var(txn.kind) var(txn.khash),map_str({{dir}}/{desired.KEYS},{desired.NO_SLOT}) "
        "if { var(txn.khash) -m found }",
        f'http-request set-var-fmt(txn.kmodel) "%[var(txn.khash)]/%[var(txn.key),map_str({{dir}}/{desired.MODEL},-)]" '
        "if { var(txn.kind) -m str some }",
        "acl key_ok var(txn.kind) -m str all",
        f"acl key_ok var(txn.kmodel),map_str({{dir}}/{desired.KEY_MODELS},-) -m str 1",
    ], " key_ok"


def render(config: ProxyConfig) -> str:
    d = config.run_dir
    tls = f" ssl crt {config.tls_pem}" if config.tls_pem else ""
    key_rules, key_cond = _key_rules(config.require_keys)
    env_header, model_header = data_plane.ENVIRONMENT_HEADER, data_plane.MODEL_HEADER
    deployment_header = data_plane.DEPLOYMENT_HEADER
    lines = [
        "global",
        f"  nbthread {config.threads}",
        f"  maxconn {config.max_http_connections + config.max_grpc_connections + 64}",
        f"  stats socket {d}/admin.sock mode 600 level admin",
        "  stats timeout 1h",
        "  tune.bufsize 32768",
        *(f"  h1-case-adjust {name.lower()} {name}" for name in HEADER_CASES),
        "  tune.http.maxhdr 128",
        "",
        *access_log.ring_section(),
        "defaults",
        "  mode http",
        "  option http-keep-alive",
        # Connections to replicas (and to the Python gateway) are shared by all requests: an h2
        # stream is a new HAProxy stream, which `safe` would send on a connection of its own.
        "  http-reuse always",
        f"  timeout connect {_ms(config.connect_timeout_seconds)}",
        f"  timeout server {_ms(config.request_timeout_seconds)}",
        f"  timeout tunnel {_ms(config.request_timeout_seconds)}",
        f"  timeout http-request {_ms(config.header_timeout_seconds)}",
        f"  timeout http-keep-alive {_ms(config.http_idle_seconds)}",
        f"  timeout client {_ms(config.http_idle_seconds)}",
        "  timeout queue 1s",
        f"  retries {config.retries}",
        "  retry-on conn-failure",  # only a request that never reached a replica is sent again
        "  option redispatch 1",
        "",
        "http-errors slipway_http",
        *(f"  errorfile {e[0]} {d}/http_{e[0]}.http" for e in ERRORS),
        "",
        "http-errors slipway_grpc",
        *(f"  errorfile {e[0]} {d}/grpc_{e[0]}.http" for e in ERRORS),
        "",
        "frontend grpc_in",
        f"  bind {config.grpc_bind}{tls}{' alpn h2' if tls else ''} proto h2",
        f"  maxconn {config.max_grpc_connections}",
        f"  timeout client {_ms(max(config.grpc_idle_seconds, config.request_timeout_seconds))}",
        # An h2 connection with no stream open is closed (GOAWAY) after the gRPC idle time, as
        # the Python gateway's max_connection_idle does (HAProxy 2.6 applies it to idle h2 connections).
        f"  timeout http-keep-alive {_ms(config.grpc_idle_seconds)}",
        "  errorfiles slipway_grpc",
        *access_log.frontend_lines(),
        *("  " + rule for rule in _request_id_rules()),
        f"  acl predict path {' '.join(PREDICT_METHODS)}",
        f"  acl by_deployment req.fhdr({deployment_header}) -m len gt 0",
        f"  acl by_environment req.fhdr({env_header}) -m len gt 0",
        f'  http-request set-var-fmt(txn.key) "/model/%[req.fhdr({model_header})]/deployment/'
        f'%[req.fhdr({deployment_header})]" if predict by_deployment',
        f'  http-request set-var-fmt(txn.key) "/model/%[req.fhdr({model_header})]/environments/'
        f'%[req.fhdr({env_header})]" if predict !by_deployment by_environment',
        f'  http-request set-var-fmt(txn.key) "/model/%[req.fhdr({model_header})]/production" '
        "if predict !by_deployment !by_environment",
        *("  " + rule.replace("{dir}", d) for rule in _choice_rules("grpc")),
        *("  " + rule.replace("{dir}", d) for rule in key_rules),
        "  acl slotted var(txn.slot) -m reg ^[0-9]+$",
        f"  use_backend g%[var(txn.slot)] if predict slotted{key_cond}",
        "  default_backend py_grpc",
        "",
        "frontend http_in",
        f"  bind {config.http_bind}{tls}",
        # Past the limit, a connection's request is refused as Python does (HAProxy queues
        # connections beyond maxconn in the listen backlog rather than answering them).
        f"  maxconn {config.max_http_connections + 64}",
        "  option h1-case-adjust-bogus-client",
        # While a request is in progress: between requests `timeout http-keep-alive` holds, and
        # once a request is complete HAProxy stops reading (a long prediction is not cut). It also
        # bounds a TLS handshake (HAProxy 2.6 has no handshake timeout): no longer than the idle time.
        f"  timeout client {_ms(min(config.body_idle_seconds, config.http_idle_seconds))}",
        "  errorfiles slipway_http",
        *access_log.frontend_lines(),
        *("  " + rule for rule in _request_id_rules()),
        "  " + _too_many_connections(config.max_http_connections),
        "  acl predict method POST",
        f"  acl predict_path path_reg {HTTP_PREDICT_PATH}",
        "  acl one_length req.hdr_cnt(content-length) eq 1",
        f"  acl small_body req.hdr(content-length) -m int le {config.max_request_bytes}",
        "  acl chunked req.hdr_cnt(transfer-encoding) gt 0",
        "  http-request set-var(txn.key) path,regsub('/predict$','') if predict predict_path one_length small_body !chunked",
        *("  " + rule.replace("{dir}", d) for rule in _choice_rules("http")),
        *("  " + rule.replace("{dir}", d) for rule in key_rules),
        "  acl slotted var(txn.slot) -m reg ^[0-9]+$",
        f"  use_backend h%[var(txn.slot)] if slotted{key_cond}",
        "  default_backend py_http",
        "",
        "backend py_grpc",
        f"  timeout server {_ms(config.python_timeout_seconds)}",
        *access_log.python_backend_lines(),
        f"  server python {config.python_grpc} proto h2",
        "",
        "backend py_http",
        f"  timeout server {_ms(config.python_timeout_seconds)}",
        *access_log.python_backend_lines(),
        f"  server python {config.python_http}",
        "",
    ]
    for slot in range(config.slots):
        lines += _grpc_backend(f"g{slot}", config.seats, d, config.python_grpc, config.max_request_bytes)
        lines += [
            f"backend h{slot}",
            "  balance leastconn",
            "  http-send-name-header x-slipway-replica-token",
            "  http-request set-header x-slipway-request-id %[var(txn.rid)]",
            f"  http-request set-header {GATEWAY_LIMIT_HEADER} {config.max_request_bytes}",
            f"  http-request set-path {data_plane.REPLICA_PREDICT_PATH}",
            *access_log.http_backend_lines(),
            "",
        ]
    return "\n".join(lines)


def _grpc_backend(name: str, seats: int, run_dir: str, python_grpc: str, max_request_bytes: int) -> list[str]:
    """Seats s0..s<seats-1>, in maintenance until a replica takes one; each request goes to the
    seat in service with the fewest sessions (leastconn, computed here so that the seat — and so
    the replica's token — is known before the request leaves).

    The seats have weight 0: HAProxy's own balancing never picks one (it would pair a seat with
    another seat's token), only `use-server` does. A request it cannot send to its seat — the
    seat went into maintenance after the choice, or the replica refused the connection (killed)
    — is redispatched at once to the backup server, the Python gateway, which routes it again
    (such a request never reached a replica)."""
    lines = [
        f"backend {name}",
        "  balance leastconn",
        "  option redispatch 1",
        # Also a stream the replica's connection lost before any answer (HAProxy 2.6 knows no
        # REFUSED_STREAM kind): sent on a connection to a replica just killed, or refused by
        # one stopping; the Python gateway retries such a call on another replica just so.
        "  retry-on conn-failure empty-response",
        "  http-request set-header x-slipway-request-id %[var(txn.rid)]",
        *access_log.grpc_backend_lines(),
        # The replica enforces the gateway's limit too (slipway/limits.py): it is not checked here.
        f"  http-request set-header {GATEWAY_LIMIT_HEADER} {max_request_bytes}",
        "  http-request set-var(txn.seat) int(-1)",
        "  http-request set-var(txn.least) int(2147483647)",
    ]
    for seat in range(seats):
        server = f"{name}/s{seat}"
        up = f"{{ srv_is_up({server}) }}"
        lines += [
            f"  http-request set-var(txn.diff) srv_conn({server}),sub(txn.least) if {up}",
            f"  http-request set-var(txn.seat) int({seat}) if {up} {{ var(txn.diff) -m int lt 0 }}",
            f"  http-request set-var(txn.least) srv_conn({server}) if {up} {{ var(txn.diff) -m int lt 0 }}",
        ]
    lines += [
        f'  http-request set-var-fmt(txn.seatkey) "{name}/%[var(txn.seat)]"',
        f"  http-request set-header x-slipway-replica-token %[var(txn.seatkey),map_str({run_dir}/{desired.TOKENS},-)]",
        *(f"  use-server s{seat} if {{ var(txn.seat) -m int {seat} }}" for seat in range(seats)),
        *(f"  server s{seat} 127.0.0.1:1 proto h2 disabled weight 0" for seat in range(seats)),
        f"  server python {python_grpc} proto h2 backup",
        "",
    ]
    return lines
