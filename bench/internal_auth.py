"""What the replica-token check costs a replica call: a grpc.aio server in this process
with one trivial unary method, called with and without slipway.internal_auth's
TokenInterceptor in front of it (same run, alternating rounds, best of each).

    .venv/bin/python bench/internal_auth.py [--calls N] [--concurrency C] [--rounds R]

Prints calls per second and microseconds per call for both, and the difference. The
client shares the process and the core with the server, so the absolute figures are a
floor; the difference is the interceptor's cost (a scan of the call metadata and one
constant-time compare per call).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

import grpc

from slipway.internal_auth import REPLICA_TOKEN_HEADER, TokenInterceptor, new_token

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Call"
CallDetails = collections.namedtuple("CallDetails", ["method", "invocation_metadata"])


async def _echo(request: bytes, context) -> bytes:
    return request


def _handler() -> grpc.GenericRpcHandler:
    method = grpc.unary_unary_rpc_method_handler(_echo)
    return grpc.method_handlers_generic_handler(SERVICE, {"Call": method})


async def _serve(token: str | None) -> tuple[grpc.aio.Server, int]:
    interceptors = [TokenInterceptor(REPLICA_TOKEN_HEADER, token, [SERVICE], "REPLICA")] if token else []
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _round(port: int, metadata, calls: int, concurrency: int) -> float:
    """Seconds for `calls` calls at `concurrency`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        await call(b"warm", metadata=metadata)
        per_worker = calls // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                await call(b"x" * 64, metadata=metadata)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def _check_alone(token: str, checks: int = 100_000) -> float:
    """Microseconds the interceptor itself spends on an accepted call (no network, no server)."""
    interceptor = TokenInterceptor(REPLICA_TOKEN_HEADER, token, [SERVICE], "REPLICA")
    handler = grpc.unary_unary_rpc_method_handler(_echo)
    metadata = (("user-agent", "grpc-python"), (REPLICA_TOKEN_HEADER, token))
    details = CallDetails(METHOD, metadata)

    async def continuation(_details):
        return handler

    started = time.perf_counter()
    for _ in range(checks):
        assert await interceptor.intercept_service(continuation, details) is handler
    return (time.perf_counter() - started) / checks * 1e6


async def main(calls: int, concurrency: int, rounds: int) -> None:
    token = new_token()
    metadata = ((REPLICA_TOKEN_HEADER, token),)
    open_server, open_port = await _serve(None)
    checked_server, checked_port = await _serve(token)
    best = {"no check": float("inf"), "token check": float("inf")}
    try:
        for _ in range(rounds):
            best["no check"] = min(best["no check"], await _round(open_port, metadata, calls, concurrency))
            best["token check"] = min(best["token check"], await _round(checked_port, metadata, calls, concurrency))
    finally:
        await open_server.stop(None)
        await checked_server.stop(None)
    print(f"{calls} unary calls at concurrency {concurrency}, best of {rounds} rounds (same process, loopback)\n")
    print("| server | calls/s | µs/call |")
    print("|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {calls / seconds:,.0f} | {seconds / calls * 1e6:.1f} |")
    extra = (best["token check"] - best["no check"]) / calls * 1e6
    print(f"\ntoken check, end to end: {extra:+.1f} µs per call (the difference of the two rows)")
    print(f"token check alone (the interceptor on an accepted call): {await _check_alone(token):.2f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency, args.rounds))
