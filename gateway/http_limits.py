"""Bounds on what HTTP clients can make the gateway hold: open connections, time without
a complete request, and request-body bytes (per request, and across all requests in
flight), so that slow, stalled or oversized clients cannot pin its memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus

import grpc
from aiohttp import hdrs, web

from gateway.errors import GatewayError, request_too_large

MiB = 1024 * 1024


@dataclass(frozen=True)
class HttpLimits:
    # Open HTTP connections; a connection beyond them is answered 503 and closed at once.
    max_connections: int = 512
    # A connection without a request in progress (idle between keep-alive requests, or
    # still sending its request line and headers) is closed after this long.
    idle_timeout_seconds: float = 15.0
    # A request body that makes no progress for this long, or is not complete within
    # the total, is answered 408 and its connection closed.
    body_idle_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 120.0
    # Request-body bytes held by all requests in flight together; a request that would
    # go over is answered 503 GATEWAY_BUSY.
    max_buffered_body_bytes: int = 256 * MiB


class BodyBudget:
    """Request-body bytes held across all requests in flight, against one limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                "GATEWAY_BUSY",
                f"the gateway already holds {self.held} bytes of request bodies; {size} more would exceed "
                f"its limit of {self.limit} bytes, retry later",
            )
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class BodyTimeout(GatewayError):
    """The client stopped sending its body: answer, then close (it is not reading anyway)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, "REQUEST_BODY_TIMEOUT", message)


class BodyReader:
    """Reads request bodies chunk by chunk under the per-request size limit, the global
    budget and the body timeouts, instead of letting aiohttp buffer each one whole."""

    def __init__(self, limits: HttpLimits, max_request_bytes: int) -> None:
        self.limits = limits
        self.max_request_bytes = max_request_bytes
        self.budget = BodyBudget(limits.max_buffered_body_bytes)

    @staticmethod
    async def defer_continue(request: web.Request) -> None:
        """Expect handler of the routes whose bodies this reader reads: instead of aiohttp's
        immediate "100 Continue", `read` sends it once the body is admitted, so a client
        refused for its declared size never sends the body."""
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {request.headers[hdrs.EXPECT]}")

    @contextlib.asynccontextmanager
    async def read(self, request: web.Request) -> AsyncIterator[bytes]:
        """The whole body. Its bytes count against the budget until the block exits: the
        payload lives until it has been forwarded. A declared length over a limit is
        refused before any of the body is read."""
        declared = request.content_length
        held = 0
        try:
            if declared is not None:
                if declared > self.max_request_bytes:
                    raise request_too_large(declared, self.max_request_bytes)
                self.budget.take(declared)
                held = declared
            if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # as aiohttp's own expect handler does: the response is still to come
            deadline = asyncio.get_running_loop().time() + self.limits.body_timeout_seconds
            chunks: list[bytes] = []
            received = 0
            while chunk := await self._next_chunk(request, deadline, received, declared):
                received += len(chunk)
                if received > self.max_request_bytes:
                    raise request_too_large(None, self.max_request_bytes)
                if received > held:  # no declared length: reserve as the bytes arrive
                    self.budget.take(received - held)
                    held = received
                chunks.append(chunk)
            payload = b"".join(chunks)
            del chunks
            yield payload
        finally:
            self.budget.give_back(held)

    async def _next_chunk(self, request: web.Request, deadline: float, received: int, declared: int | None) -> bytes:
        """The next bytes of the body (b"" at its end), or BodyTimeout."""
        limits = self.limits
        now = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(min(limits.body_idle_timeout_seconds, deadline - now)):
                return await request.content.readany()
        except TimeoutError:
            progress = f"{received}{'' if declared is None else f' of {declared}'} bytes received"
            if asyncio.get_running_loop().time() >= deadline:
                raise BodyTimeout(
                    f"request body not complete within {limits.body_timeout_seconds:g}s ({progress})"
                ) from None
            raise BodyTimeout(
                f"request body stalled: no bytes for {limits.body_idle_timeout_seconds:g}s ({progress})"
            ) from None


class LimitedSite(web.BaseSite):
    """A TCP site that caps open connections and closes those without a request in time.

    aiohttp has no connection limit, and the one place every accepted connection passes
    through is the protocol factory a site hands to the event loop. So this site makes
    the request handlers itself (with the limits as their arguments, which is why the
    runner gets none) and answers a connection beyond the cap with a canned 503."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: HttpLimits,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner)
        # A socket already bound and listening (then host and port only name it).
        self._sock = sock
        self._reuse_port = reuse_port
        self._host = host
        self._port = port
        self._limits = limits
        self._ssl = ssl_context
        self.open_connections = 0
        self._refusal = _raw_response(
            GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                "TOO_MANY_CONNECTIONS",
                f"the gateway already has {limits.max_connections} open HTTP connections, its limit; retry later",
            )
        )

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        # A client that never completes its handshake is bounded like one that never sends headers.
        handshake = self._limits.idle_timeout_seconds if self._ssl else None
        if self._sock is not None:
            server = await loop.create_server(
                self._accept, sock=self._sock, backlog=self._backlog, ssl=self._ssl, ssl_handshake_timeout=handshake
            )
        else:
            server = await loop.create_server(
                self._accept,
                self._host,
                self._port,
                backlog=self._backlog,
                ssl=self._ssl,
                # Several gateway workers listen on one port (SO_REUSEPORT; the kernel spreads connections).
                reuse_port=self._reuse_port or None,
                ssl_handshake_timeout=handshake,
            )
        self._server = server
        self._port = server.sockets[0].getsockname()[1]  # the one asked for may be 0

    def _accept(self) -> asyncio.BaseProtocol:
        if self.open_connections >= self._limits.max_connections:
            return _Refusal(self._refusal)
        self.open_connections += 1
        return _CountedRequestHandler(
            self,
            self._runner.server,
            loop=asyncio.get_running_loop(),
            # aiohttp arms this timer when a connection opens and after each response, and
            # fires it only while no complete request has arrived: it bounds idle
            # keep-alive connections and clients trickling their headers alike.
            keepalive_timeout=self._limits.idle_timeout_seconds,
            access_log=None,
        )


class _CountedRequestHandler(web.RequestHandler):
    """aiohttp's handler, counted out of its site's open connections when the connection ends."""

    __slots__ = ("_site",)

    def __init__(self, site: LimitedSite, manager, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self._site = site

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._site.open_connections -= 1


class _Refusal(asyncio.Protocol):
    """Answers 503 and closes at once, without waiting for the client's request: a refused
    connection must not hold a descriptor for as long as the client likes."""

    def __init__(self, response: bytes) -> None:
        self._response = response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._response)
        transport.close()


def _raw_response(error: GatewayError) -> bytes:
    body = json.dumps(error.to_json()).encode()
    head = (
        f"HTTP/1.1 {error.http_status} {HTTPStatus(error.http_status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
