"""Slow and stalled HTTP clients against a gateway process with its default settings:
what they make it hold (RSS) and how long they keep their connections.

    .venv/bin/python bench/slow_clients.py [--clients 12] [--slowloris 400]

Three attacks, one after the other, on one `slipway gateway` process (with its
controller; no model is deployed, since every answer here comes before routing):

1. stalled bodies: each client announces a 63 MiB body, sends 62 MiB of it and stops;
2. `Content-Length: 100 GiB` and no body: how long until an answer;
3. slowloris: connections that trickle header bytes and never finish their headers.

It prints figures; it never fails because a figure is bad.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.common import Platform, machine_info  # noqa: E402

MiB = 1024 * 1024
PATH = "/model/m_nothing/production/predict"
# How long the benchmark watches each attack before it counts what is still open.
WATCH_SECONDS = 30.0


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def head(length: int) -> bytes:
    return f"POST {PATH} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()


async def answer(reader: asyncio.StreamReader) -> str:
    """The status code, 'closed' if the gateway closed without one."""
    try:
        line = await reader.readline()
    except ConnectionError:
        return "reset"
    return line.split()[1].decode() if line else "closed"


async def stalled_bodies(port: int, pid: int, clients: int) -> None:
    chunk = b" " * MiB
    started = time.monotonic()
    outcomes: dict[int, tuple[str, float]] = {}
    peak = rss_mib(pid)

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head(63 * MiB))

        async def send() -> None:
            for _ in range(62):
                writer.write(chunk)
                await writer.drain()

        sending = asyncio.create_task(send())
        outcome = await answer(reader)
        outcomes[index] = (outcome, time.monotonic() - started)
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    deadline = started + WATCH_SECONDS
    while time.monotonic() < deadline and not all(t.done() for t in tasks):
        peak = max(peak, rss_mib(pid))
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    by_outcome: dict[str, list[float]] = {}
    for outcome, at in outcomes.values():
        by_outcome.setdefault(outcome, []).append(at)
    summary = ", ".join(f"{len(v)}× {k} (by {max(v):.1f}s)" for k, v in sorted(by_outcome.items())) or "none"
    print(
        f"| stalled bodies: {clients} × 62 of 63 MiB | peak RSS {peak:.0f} MiB | answers: {summary}; "
        f"{clients - len(outcomes)} still unanswered after {WATCH_SECONDS:g}s | RSS after {rss_mib(pid):.0f} MiB |"
    )


async def huge_declared_length(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head(100 * 1024**3))
    try:
        outcome = await asyncio.wait_for(answer(reader), WATCH_SECONDS)
        result = f"{outcome} after {time.monotonic() - started:.3f}s"
    except TimeoutError:
        result = f"no answer after {WATCH_SECONDS:g}s"
    writer.close()
    print(f"| Content-Length 100 GiB, no body | | {result} | |")


async def slowloris(port: int, pid: int, connections: int) -> None:
    started = time.monotonic()
    closed_at: list[float] = []

    async def client() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            closed_at.append(time.monotonic() - started)
            return
        writer.write(f"POST {PATH} HTTP/1.1\r\nHost: gw\r\n".encode())
        try:
            while not reader.at_eof():
                writer.write(b"X")
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    continue
        except ConnectionError:
            pass
        closed_at.append(time.monotonic() - started)
        writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(connections)]
    await asyncio.wait(tasks, timeout=WATCH_SECONDS)
    rss = rss_mib(pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    last = f", the last after {max(closed_at):.1f}s" if closed_at else ""
    print(
        f"| slowloris: {connections} connections | RSS {rss:.0f} MiB | {len(closed_at)} closed by the gateway "
        f"within {WATCH_SECONDS:g}s{last} | |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=12, help="stalled-body clients")
    parser.add_argument("--slowloris", type=int, default=400, help="slowloris connections")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        platform = Platform.start(pathlib.Path(work))
        try:
            port = int(platform.http_base.rsplit(":", 1)[1])
            pid = platform.gateway.pid
            print("\n".join(machine_info()))
            print(f"- gateway RSS at rest: {rss_mib(pid):.0f} MiB\n")
            print("| attack | gateway memory | outcome | after |")
            print("|---|---|---|---|")
            await stalled_bodies(port, pid, options.clients)
            await huge_declared_length(port)
            await slowloris(port, pid, options.slowloris)
        finally:
            platform.stop()


if __name__ == "__main__":
    asyncio.run(main())
