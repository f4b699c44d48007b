"""The fast path's per-request metrics: HAProxy logs one line per request it forwarded to a
replica itself into a bounded ring of its own (`ring slipway_log`, 1 MiB), which the gateway
streams over the admin socket of its private run dir (`show events slipway_log -w -n`); it reads
the lines in batches (a loop reader on a non-blocking socket, never blocking; drained before a
scrape answers) and records each through the same Observation path the Python data plane's
fronts use (gateway/metrics.py), so that `slipway_inference_requests_total`, the duration and
first-byte histograms and the deployment loads (status classes, latency buckets) count both
planes alike.

Why a ring and not a unix datagram socket: a datagram socket's queue holds
`net.unix.max_dgram_qlen` lines (10 by default, in containers too), which a burst fills
whenever the gateway's loop is busy for a millisecond (measured: a third of the lines lost at
740 req/s). The ring absorbs about 10,000 lines; when the gateway falls further behind, HAProxy
drops new lines (memory never grows).

A line (`LOG_FORMAT`): the backend (`g<slot>` gRPC, `h<slot>` HTTP; anything else is not the
fast path and ignored), the HTTP status, the response's `grpc-status` header (a gRPC
Trailers-Only answer — an error — has it; a 200 without it is a call that went on to its
trailers, which HAProxy 2.6 cannot log: counted OK), `1` for a streamed answer, HAProxy's
termination state, the bytes sent, and the request's arrival, its answer's headers and the
log's time (microseconds since the epoch). A line that does not parse is counted (`malformed`)
and dropped."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.errors import HTTP_STATUS
from gateway.metrics import CLIENT_LEFT, GRPC, HTTP, GatewayMetrics
from gateway.routing import RouteIndex

RING = "slipway_log"
RING_BYTES = 1 << 20
MAX_LINE_BYTES = 1024
READ_BYTES = 64 * 1024  # per recv; up to BATCH_READS of them per wake-up of the loop reader
BATCH_READS = 4

# -- haproxy.cfg pieces (pure) --------------------------------------------------------------

LOG_FORMAT = '"%b %ST %[var(txn.gs)] %[var(txn.stream)] %tsc %B %[var(txn.t0)] %[var(txn.t1)] %[date(0,us)]"'


def ring_section() -> list[str]:
    return [f"ring {RING}", "  format raw", f"  size {RING_BYTES}", ""]


def frontend_lines() -> list[str]:
    return [
        f"  log ring@{RING} len {MAX_LINE_BYTES} format raw local0",
        "  option dontlognull",
        f"  log-format {LOG_FORMAT}",
        "  http-request set-var(txn.t0) date(0,us)",
        "  http-after-response set-var(txn.gs) res.hdr(grpc-status)",
    ]


def python_backend_lines() -> list[str]:
    """The Python gateway observes its requests itself."""
    return ["  http-request set-log-level silent"]


def grpc_backend_lines() -> list[str]:
    return [
        "  http-request set-var(txn.stream) int(1) if { path /slipway.v1.InferenceService/PredictStream }",
        "  http-response set-var(txn.t1) date(0,us)",
    ]


def http_backend_lines() -> list[str]:
    return [
        "  http-response set-var(txn.t1) date(0,us)",
        "  http-response set-var(txn.stream) int(1) if { res.hdr(transfer-encoding) -m sub chunked }",
    ]


# -- one line (pure) ----------------------------------------------------------------------

GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
GRPC_OF_HTTP = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


class Malformed(ValueError):
    pass


@dataclass(frozen=True)
class Answer:
    """One fast-path request, as its observation records it."""

    protocol: str
    slot: int
    code: str  # status_code (HTTP) or grpc_code's name (gRPC)
    http_status: int
    seconds: float  # arrival to the answer's end
    first_byte: float  # arrival to the answer's headers, streamed answers only (else 0)


def _micros(field: str) -> int:
    if not field.isdigit():
        raise Malformed(f"not a time: {field!r}")
    return int(field)


def parse(line: bytes) -> Answer | None:
    """The answer a log line reports; None for a request that was not on the fast path."""
    fields = line.decode("ascii", "replace").split()
    if len(fields) != 9:
        raise Malformed(f"{len(fields)} fields")
    backend, status, grpc_status, stream, termination, _bytes, t0, t1, now = fields
    if len(backend) < 2 or backend[0] not in "gh" or not backend[1:].isdigit():
        return None
    if not status.lstrip("-").isdigit():
        raise Malformed(f"not a status: {status!r}")
    started, ended = _micros(t0), _micros(now)
    if ended < started:
        raise Malformed("ends before it starts")
    seconds = (ended - started) / 1e6
    first_byte = (_micros(t1) - started) / 1e6 if stream == "1" and t1 != "-" else 0.0
    left = termination.startswith("C")
    http_status = int(status) if int(status) >= 100 else 502
    if backend[0] == "h":
        code = str(CLIENT_LEFT) if left else str(http_status)
        return Answer(HTTP, int(backend[1:]), code, int(code), seconds, first_byte)
    if left:
        grpc_code = grpc.StatusCode.CANCELLED
    elif grpc_status != "-":
        if not grpc_status.isdigit() or int(grpc_status) not in GRPC_CODES:
            raise Malformed(f"not a grpc-status: {grpc_status!r}")
        grpc_code = GRPC_CODES[int(grpc_status)]
    elif http_status == 200:
        grpc_code = grpc.StatusCode.OK
    else:
        grpc_code = GRPC_OF_HTTP.get(http_status, grpc.StatusCode.UNKNOWN)
    if grpc_code is not grpc.StatusCode.OK:
        first_byte = 0.0  # an error answer carries no message
    answered = 200 if grpc_code is grpc.StatusCode.OK else HTTP_STATUS.get(grpc_code, 500)
    return Answer(GRPC, int(backend[1:]), grpc_code.name, answered, seconds, first_byte)


# -- the reader ---------------------------------------------------------------------------


class AccessLog:
    """The gateway's reader of HAProxy's log ring; `owner()` maps a slot to its deployment ID."""

    def __init__(self, metrics: GatewayMetrics, index: Callable[[], RouteIndex], owner: Callable[[], dict[str, int]]):
        self._metrics = metrics
        self._index = index
        self._owner = owner
        self.malformed = 0
        self.recorded = 0
        self._sock: socket.socket | None = None
        self._partial = b""
        metrics.before_scrape.append(self.drain)
        metrics.registry.register(_LogCollector(self))

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self, admin_socket: str) -> None:
        """Follow the ring from now on (HAProxy just started, or the stream broke)."""
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(admin_socket)
            sock.sendall(f"show events {RING} -w -n\n".encode())
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock, self._partial = sock, b""
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read_batch)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _read_batch(self) -> None:
        self._read(BATCH_READS)

    def drain(self) -> None:
        """Everything HAProxy sent so far (before a scrape answers)."""
        while self._read(BATCH_READS) == BATCH_READS:
            pass

    def _read(self, reads: int) -> int:
        """Up to `reads` chunks from the socket, their whole lines recorded; the chunks read."""
        chunks: list[bytes] = []
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._sock is not None and len(chunks) < reads:
                chunk = self._sock.recv(READ_BYTES)
                if not chunk:  # HAProxy stopped (or closed the stream): the poller reconnects
                    self.close()
                    break
                chunks.append(chunk)
        if chunks:
            *lines, self._partial = b"".join([self._partial, *chunks]).split(b"\n")
            if len(self._partial) > MAX_LINE_BYTES:
                self._partial = b""
                self.malformed += 1
            self.record(lines)
        return len(chunks)

    def record(self, lines: list[bytes]) -> None:
        owner = {slot: deployment_id for deployment_id, slot in self._owner().items()}
        deployments = self._index().deployments
        now = time.perf_counter()
        for line in lines:
            if not line:
                continue
            try:
                answer = parse(line)
            except (Malformed, ValueError):
                self.malformed += 1
                continue
            if answer is None:
                continue
            deployment = deployments.get(owner.get(answer.slot, ""))
            if deployment is None:  # its slot was freed since (the deployment left the table)
                continue
            observation = self._metrics.start(answer.protocol)
            observation.routed(deployment)
            observation.started = now - answer.seconds
            if answer.first_byte:
                observation.first_byte = observation.started + answer.first_byte
            self._metrics.record(observation, answer.code, answer.http_status, now)
            self.recorded += 1


class _LogCollector(Collector):
    def __init__(self, log: AccessLog) -> None:
        self._log = log

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "slipway_native_log_malformed",
            "Lines of HAProxy's fast-path log the gateway could not read (dropped, not counted).",
            value=self._log.malformed,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())
