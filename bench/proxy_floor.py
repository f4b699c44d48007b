"""The floor under any Python gateway: what one bare forwarding hop costs on this machine.

    .venv/bin/python bench/proxy_floor.py            # ~1 minute
    .venv/bin/python bench/proxy_floor.py --requests 1000

Starts one echo replica and three minimal pass-through proxies in front of it, each as
its own process and each doing nothing but forwarding the request bytes of
slipway.v1.ReplicaService/Invoke to the replica over one persistent connection and the
reply bytes back (no routing, no load accounting, no error mapping):

1. grpc.aio server + grpc.aio channel (the stack the gateway uses);
2. grpc sync server (thread pool) + blocking grpc channel;
3. asyncio + h2 (pure-Python HTTP/2) on both sides, no grpc at all.

Then h2load (not Python) at concurrency 1 against the replica and each proxy: p50/p99
latency, and each proxy's CPU time per request. Whatever a proxy adds here, a gateway
written on the same stack adds at least as much. It prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import free_port, machine_info, wait_reachable  # noqa: E402
from bench.gateway import GRPC_HEADERS, INVOKE, PAYLOAD, Run, cpu_seconds, grpc_frame, h2load, parse_log  # noqa: E402

PROXIES = {
    "aio": "grpc.aio server + grpc.aio channel",
    "sync": "grpc sync server (8 threads) + blocking channel",
    "h2": "asyncio + h2, no grpc",
}


# --- the proxies (run with --serve KIND) -------------------------------------------------


def serve_grpc_aio(upstream: str, port: int) -> None:
    import grpc

    async def main() -> None:
        call = grpc.aio.insecure_channel(upstream).unary_unary(INVOKE)

        async def invoke(request: bytes, context) -> bytes:
            return await call(request, timeout=10)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_invoke_handler(grpc, invoke),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_grpc_sync(upstream: str, port: int) -> None:
    from concurrent import futures

    import grpc

    call = grpc.insecure_channel(upstream).unary_unary(INVOKE)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_invoke_handler(grpc, lambda request, context: call(request, timeout=10)),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _invoke_handler(grpc, behaviour):
    service, method = INVOKE.strip("/").split("/")
    return grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(behaviour)})


def serve_h2(upstream: str, port: int) -> None:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    def connection(client_side: bool) -> h2.connection.H2Connection:
        return h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))

    class Upstream(asyncio.Protocol):
        def __init__(self) -> None:
            self.h2 = connection(client_side=True)
            self.callers: dict[int, tuple[Downstream, int]] = {}

        def connection_made(self, transport) -> None:
            self.transport = transport
            self.h2.initiate_connection()
            self.h2.increment_flow_control_window(2**30)
            transport.write(self.h2.data_to_send())

        def forward(self, caller: Downstream, caller_stream: int, headers, body: bytes) -> None:
            stream = self.h2.get_next_available_stream_id()
            self.callers[stream] = (caller, caller_stream)
            self.h2.send_headers(stream, headers)
            self.h2.send_data(stream, body, end_stream=True)
            self.transport.write(self.h2.data_to_send())

        def data_received(self, data: bytes) -> None:
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:  # the replica going away at the end of the run
                self.transport.close()
                return
            for event in events:
                if isinstance(event, h2.events.ResponseReceived):
                    caller, stream = self.callers[event.stream_id]
                    caller.h2.send_headers(stream, event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    caller, stream = self.callers[event.stream_id]
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    caller.h2.send_data(stream, event.data)
                elif isinstance(event, h2.events.TrailersReceived):
                    caller, stream = self.callers.pop(event.stream_id)
                    caller.h2.send_headers(stream, event.headers, end_stream=True)
                    caller.flush()
            self.transport.write(self.h2.data_to_send())

    class Downstream(asyncio.Protocol):
        def __init__(self) -> None:
            self.h2 = connection(client_side=False)
            self.requests: dict[int, list] = {}

        def connection_made(self, transport) -> None:
            self.transport = transport
            self.h2.initiate_connection()
            self.flush()

        def flush(self) -> None:
            self.transport.write(self.h2.data_to_send())

        def data_received(self, data: bytes) -> None:
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.requests[event.stream_id] = [event.headers, b""]
                elif isinstance(event, h2.events.DataReceived):
                    self.requests[event.stream_id][1] += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, body = self.requests.pop(event.stream_id)
                    replica.forward(self, event.stream_id, headers, body)
            self.flush()

    async def main() -> None:
        nonlocal replica
        host, replica_port = upstream.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        _, replica = await loop.create_connection(Upstream, host, int(replica_port))
        server = await loop.create_server(Downstream, "127.0.0.1", port)
        await server.serve_forever()

    replica: Upstream | None = None
    asyncio.run(main())


SERVERS = {"aio": serve_grpc_aio, "sync": serve_grpc_sync, "h2": serve_h2}


# --- the benchmark ------------------------------------------------------------------------


def measure(name: str, address: str, pid: int, body: pathlib.Path, requests: int, work: pathlib.Path) -> Run:
    url = f"http://{address}{INVOKE}"
    h2load(url, body, GRPC_HEADERS, max(requests // 5, 100), 1, None, h1=False)  # warm-up
    run = Run(name, 1, requests)
    before = cpu_seconds(pid)
    log_file = work / f"{name}.log"
    h2load(url, body, GRPC_HEADERS, requests, 1, log_file, h1=False)
    run.cpu = {"process": cpu_seconds(pid) - before}
    parse_log(log_file, run)
    return run


def main(args: argparse.Namespace) -> int:
    processes: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="slipway-proxy-floor-") as tmp:
            work = pathlib.Path(tmp)
            replica_port = free_port()
            replica = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "replica",
                    "--package",
                    str(REPO / "examples" / "echo"),
                    "--state-file",
                    str(work / "state.json"),
                    "--port",
                    str(replica_port),
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(replica)
            replica_address = f"127.0.0.1:{replica_port}"
            wait_reachable(replica_address, replica, "replica")
            from slipway.v1 import replica_service_pb2 as rs

            body = work / "invoke.bin"
            body.write_bytes(
                grpc_frame(rs.InvokeRequest(payload=PAYLOAD, content_type="application/json").SerializeToString())
            )

            targets = [("direct to the replica", replica_address, replica.pid)]
            for kind, description in PROXIES.items():
                port = free_port()
                proxy = subprocess.Popen(
                    [sys.executable, __file__, "--serve", kind, "--upstream", replica_address, "--port", str(port)],
                    cwd=REPO,
                )
                processes.append(proxy)
                wait_reachable(f"127.0.0.1:{port}", proxy, description)
                targets.append((description, f"127.0.0.1:{port}", proxy.pid))

            runs = [measure(name, address, pid, body, args.requests, work) for name, address, pid in targets]
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)

    direct = runs[0]
    print("## One bare forwarding hop in Python (h2load, concurrency 1, echo model)\n")
    print("\n".join(machine_info()) + "\n")
    print("| path | requests | p50 ms | p99 ms | added p50 ms | process CPU ms/req | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        added = "-" if run is direct else f"{run.p50_ms - direct.p50_ms:+.3f}"
        cpu = run.cpu["process"] / run.requests * 1000
        print(
            f"| {run.path} | {run.requests} | {run.p50_ms:.3f} | {run.p99_ms:.3f} | {added} | {cpu:.3f} | {run.failed} |"
        )
    print("\n`process CPU` is the replica's for the direct row, the proxy's for the others.")
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        SERVERS[arguments.serve](arguments.upstream, arguments.port)
    else:
        sys.exit(main(arguments))
