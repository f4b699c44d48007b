"""The log pipeline's throughput: capture in a replica, collection, queries.

    .venv/bin/python bench/logs.py            # ~20 s on 2 cores
    .venv/bin/python bench/logs.py --quick    # smoke run with small counts

Needs nothing running. Figures, never assertions:
1. capture: records/s a model thread writes through replica/capture.py (print → JSON
   line on a descriptor, here /dev/null), with the rate limit out of the way;
2. collection: records/s the controller's collector turns a replica log file into stored
   records (controller/log_collector.py into logs.db);
3. queries over that store: ListLogs of one request's lines (by request ID), a page of a
   deployment's newest lines, a text filter over all of them (a scan), p50 of each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import statistics
import tempfile
import time

from controller.log_collector import CollectorSettings, LogCollector
from controller.log_records import LogQuery, Source
from controller.log_store import Retention, SqliteLogStore
from replica.capture import REQUEST_ID, CapturedStream, LogSink


def capture(count: int) -> float:
    with open(os.devnull, "wb") as devnull:
        sink = LogSink(devnull.fileno(), rate_bytes=1 << 40, burst_bytes=1 << 40)
        stream = CapturedStream(sink, "stdout", 1)
        REQUEST_ID.set("req-0123456789abcdef01234567")
        started = time.perf_counter()
        for i in range(count):
            stream.write(f"handling request number {i} with some words of context\n")
        return count / (time.perf_counter() - started)


async def collect_and_query(directory: pathlib.Path, records: int, requests: int) -> dict[str, float]:
    logs = directory / "logs"
    logs.mkdir()
    with (logs / "r-bench.log").open("w") as f:
        for i in range(records):
            line = {
                "ts": 1_700_000_000 + i / 1000,
                "level": "warning" if i % 50 == 0 else "info",
                "stream": "stdout",
                "request_id": f"req-{i % requests:024x}",
                "msg": f"handling request {i % requests}: step {i // requests} of the work, cache {'hit' if i % 7 else 'miss'}",
            }
            f.write(json.dumps(line) + "\n")
    store = await SqliteLogStore.open(directory / "logs.db", Retention(max_bytes=1 << 40, max_seconds=1e12))

    async def resolve(path: pathlib.Path, build: bool) -> Source:
        return Source("m-bench", "d-bench", path.stem)

    collector = LogCollector(store, logs, None, resolve, CollectorSettings())
    started = time.perf_counter()
    while await collector.collect():
        pass
    figures = {"collect_records_per_s": records / (time.perf_counter() - started)}

    async def p50(query: LogQuery, page_size: int, repeat: int = 50) -> float:
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            await store.list_records(query, page_size, "")
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1000

    figures["by_request_id_p50_ms"] = await p50(LogQuery(deployment_id="d-bench", request_id=f"req-{7:024x}"), 100)
    figures["newest_page_p50_ms"] = await p50(LogQuery(deployment_id="d-bench"), 100)
    figures["text_filter_p50_ms"] = await p50(LogQuery(deployment_id="d-bench", text="CACHE MISS"), 100, 5)
    figures["text_scan_p50_ms"] = await p50(LogQuery(deployment_id="d-bench", text="no such words"), 100, 5)
    await store.close()
    figures["db_bytes"] = float((directory / "logs.db").stat().st_size)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    records, requests, lines = (10_000, 100, 20_000) if args.quick else (200_000, 2_000, 200_000)
    print(f"capture: {capture(lines):,.0f} lines/s (one thread, print → JSON record)")
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(KeyboardInterrupt):
        figures = asyncio.run(collect_and_query(pathlib.Path(tmp), records, requests))
    print(f"collection: {figures['collect_records_per_s']:,.0f} records/s into logs.db ({records:,} records)")
    print(f"logs.db: {figures['db_bytes'] / 1e6:.1f} MB for {records:,} records")
    print(
        f"ListLogs by request ID ({records // requests} lines of {records:,}): p50 {figures['by_request_id_p50_ms']:.2f} ms"
    )
    print(f"ListLogs newest page of 100: p50 {figures['newest_page_p50_ms']:.2f} ms")
    print(f"ListLogs text filter, a page of matches: p50 {figures['text_filter_p50_ms']:.1f} ms")
    print(f"ListLogs text filter matching nothing (a scan of {records:,}): p50 {figures['text_scan_p50_ms']:.1f} ms")


if __name__ == "__main__":
    main()
