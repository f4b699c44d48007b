"""The bounds of log capture and storage: line cuts, the replica's rate, the collector's
backlog, retention by age and size, collection offsets across restarts."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import pathlib
import threading

import pytest
from conftest import Api, controller_settings, stop_or_explain, wait_until

from controller.log_collector import CollectorSettings, LogCollector, LogSettings
from controller.log_records import BUILD, LogQuery, LogRecord, Source, parse_replica_line
from controller.log_store import Retention, SqliteLogStore
from controller.server import Controller
from replica.capture import REQUEST_ID, CapturedStream, LogSink
from replica.threads import ModelThreads
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import log_service_pb2 as ls
from slipway.v1 import log_service_pb2_grpc as ls_grpc
from slipway.v1 import resources_pb2 as r

SOURCE = Source("m-1", "d-1", "r-1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sink_lines(read_fd: int) -> list[dict]:
    os.set_blocking(read_fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(read_fd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_lines_past_the_limit_are_cut_and_records_past_the_rate_dropped_and_counted(pipe):
    read_fd, write_fd = pipe
    clock = Clock()
    sink = LogSink(write_fd, max_line_bytes=1000, rate_bytes=10_000, burst_bytes=10_000, clock=clock)
    sink.emit("stdout", "info", "x" * 5000)
    [cut] = sink_lines(read_fd)
    assert len(cut["msg"].encode()) <= 1000 and cut["msg"].endswith("bytes cut]") and "4" in cut["msg"]
    for _ in range(100):  # ~100 bytes each: the burst takes about a hundred
        sink.emit("stdout", "info", "y" * 60)
    kept = sink_lines(read_fd)
    assert 50 < len(kept) < 100 and sink.dropped_records == 100 - len(kept)
    dropped = sink.dropped_records
    clock.now += 1.0  # a second's worth of rate again
    sink.emit("stdout", "info", "after the pause")
    note, after = sink_lines(read_fd)
    assert note["stream"] == "server" and note["level"] == "warning"
    assert note["dropped_records"] == dropped and f"{dropped} log records" in note["msg"]
    assert after["msg"] == "after the pause" and sink.dropped_records == 0


async def test_model_threads_carry_the_request_id_and_keep_their_partial_lines_apart(pipe):
    read_fd, write_fd = pipe
    sink = LogSink(write_fd)
    stream = CapturedStream(sink, "stdout", 1)
    threads = ModelThreads(2)
    started = threading.Barrier(2)

    def speak(word: str) -> None:
        stream.write(f"{word} ")
        started.wait(5)  # both threads hold a partial line at once
        stream.write(f"from {word}\n")

    async def call(request_id: str, word: str) -> None:
        REQUEST_ID.set(request_id)
        await threads.run(speak, word)

    await asyncio.gather(
        asyncio.create_task(call("req-a", "alpha"), context=contextvars.Context()),
        asyncio.create_task(call("req-b", "beta"), context=contextvars.Context()),
    )
    threads.shutdown()
    lines = {(line["request_id"], line["msg"]) for line in sink_lines(read_fd)}
    assert lines == {("req-a", "alpha from alpha"), ("req-b", "beta from beta")}


def test_a_line_a_model_writes_as_json_cannot_claim_another_source():
    forged = json.dumps({"ts": "never", "level": "loud", "stream": "build", "msg": 7, "request_id": "a b"})
    record = parse_replica_line(forged.encode(), SOURCE, 123.0, 1000)
    assert (record.time, record.level, record.stream, record.request_id) == (123.0, 20, "server", "")
    assert (record.model_id, record.deployment_id, record.replica_id) == ("m-1", "d-1", "r-1")
    raw = parse_replica_line(b"\x00 not json \xff", SOURCE, 5.0, 1000)
    assert raw.stream == "stderr" and raw.message.startswith("\x00 not json")


def record(time: float, message: str = "m") -> LogRecord:
    return LogRecord(time, 20, "stdout", "m-1", "d-1", "r-1", "", "", message)


async def test_retention_removes_records_past_the_age_and_the_oldest_past_the_size(tmp_path):
    store = await SqliteLogStore.open(tmp_path / "logs.db", Retention(max_bytes=100_000, max_seconds=3600))
    try:
        await store.add([record(1000.0 + i, f"old {i}") for i in range(10)])
        await store.add([record(9000.0 + i, f"new {i}") for i in range(10)])
        assert await store.enforce_retention(now=9000.0 + 3600 - 1) == 10
        query = LogQuery(deployment_id="d-1", newest_first=False)
        page = await store.list_records(query, 100, "")
        assert [rec.message for rec in page.records] == [f"new {i}" for i in range(10)]

        # ~1100 bytes each: past 100 kB the oldest go until 90 kB is left.
        await store.add([record(9100.0 + i, f"{i:04d}" + "z" * 1000) for i in range(120)])
        assert 0.85 * 100_000 <= store.total_bytes <= 0.9 * 100_000
        page = await store.list_records(query, 1000, "")
        assert page.records[-1].message.startswith("0119") and not page.records[0].message.startswith("new")
        kept = sum(rec.size for rec in page.records)
        assert kept == store.total_bytes
    finally:
        await store.close()
    reopened = await SqliteLogStore.open(tmp_path / "logs.db", Retention())
    assert reopened.total_bytes == kept
    await reopened.close()


async def test_pages_continue_in_either_order_and_only_the_same_listing(tmp_path):
    store = await SqliteLogStore.open(tmp_path / "logs.db", Retention())
    try:
        await store.add([record(100.0 + i, f"line {i}") for i in range(25)])
        for newest_first in (True, False):
            query, seen, token = LogQuery(deployment_id="d-1", newest_first=newest_first), [], ""
            while True:
                page = await store.list_records(query, 10, token)
                seen += [rec.message for rec in page.records]
                token = page.next_page_token
                if not token:
                    break
            expected = [f"line {i}" for i in range(25)]
            assert seen == (expected[::-1] if newest_first else expected)
        first = await store.list_records(LogQuery(deployment_id="d-1"), 10, "")
        with pytest.raises(Exception, match="another listing"):
            await store.list_records(LogQuery(deployment_id="d-1", text="x"), 10, first.next_page_token)
    finally:
        await store.close()


async def test_the_collector_skips_a_backlog_and_resumes_where_it_stopped(tmp_path):
    logs, builds = tmp_path / "logs", tmp_path / "builds"
    logs.mkdir()
    builds.mkdir()
    store = await SqliteLogStore.open(tmp_path / "logs.db", Retention())

    async def resolve(path: pathlib.Path, build: bool) -> Source | None:
        return Source("m-1", path.stem, "" if build else path.stem) if path.stem != "unknown" else None

    settings = CollectorSettings(read_bytes=4096, max_line_bytes=300, max_backlog_bytes=50_000)
    lines = [json.dumps({"ts": 1.0 + i, "level": "info", "stream": "stdout", "msg": f"n{i}"}) for i in range(5000)]
    (logs / "r-big.log").write_text("\n".join(lines) + "\n")
    (logs / "r-long.log").write_text("q" * 10_000 + "\nshort\npartial")
    (logs / "unknown.log").write_text("whose?\n")
    (builds / "d-built.log").write_text("Collecting numpy\nSuccessfully installed numpy\n")
    try:
        collector = LogCollector(store, logs, builds, resolve, settings)
        await collector.start()
        await collector.stop()
        while await collector.collect():
            pass
        big = await store.list_records(LogQuery(deployment_id="r-big", newest_first=False), 1000, "")
        [skipped] = [rec for rec in big.records if rec.stream == "server"]
        assert "bytes of log skipped" in skipped.message and skipped.level == 30
        kept = [rec.message for rec in big.records if rec.stream == "stdout"]
        assert (
            kept[-1] == "n4999" and 50_000 // 80 < len(kept) < 50_000 // 60
        )  # the last 50 kB of lines (~68 bytes each)
        long = await store.list_records(LogQuery(deployment_id="r-long", newest_first=False), 10, "")
        assert [len(rec.message.encode()) <= 300 for rec in long.records] == [True, True]
        assert long.records[0].message.endswith("bytes cut]") and long.records[1].message == "short"
        built = await store.list_records(LogQuery(deployment_id="d-built", build=True, newest_first=False), 10, "")
        assert [(rec.stream, rec.message) for rec in built.records] == [
            (BUILD, "Collecting numpy"),
            (BUILD, "Successfully installed numpy"),
        ]

        # A new collector (a restarted controller) adds only what was written since.
        with (logs / "r-long.log").open("a") as f:
            f.write(" now ends\n")
        again = LogCollector(store, logs, builds, resolve, settings)
        await again.start()
        await again.stop()
        long = await store.list_records(LogQuery(deployment_id="r-long", newest_first=False), 10, "")
        assert [rec.message for rec in long.records][1:] == ["short", "partial now ends"]

        # A file garbage collection removed leaves no offset behind (its records stay).
        (logs / "r-long.log").unlink()
        await again._forget_removed_files()
        assert (
            str(logs / "r-long.log") not in await store.offsets() and str(logs / "r-big.log") in await store.offsets()
        )
        assert len((await store.list_records(LogQuery(deployment_id="r-long"), 10, "")).records) == 3
    finally:
        await store.close()


CHATTY_MODEL = """
import logging, time

class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        print("w" * 100_000)
        for i in range(20_000):
            print(f"flood {i} " + "f" * 1000)
        time.sleep(0.1)  # the rate lets the next record through, with the count of those dropped
        logging.getLogger("chatty").error("done flooding")
        return "ok"
"""


async def test_a_model_that_floods_its_log_is_cut_and_rate_limited(tmp_path):
    settings = controller_settings(
        tmp_path / "data",
        logs=LogSettings(
            collector=CollectorSettings(max_line_bytes=4096, poll_seconds=0.05), replica_rate_bytes=64_000
        ),
    )
    controller = await Controller.start(settings)
    try:
        import grpc

        from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
        from slipway.v1 import model_service_pb2_grpc as ms_grpc

        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            logs = ls_grpc.LogServiceStub(channel)
            pushed = await api.push(api.package("chatty", source=CHATTY_MODEL), target=ds.PUSH_TARGET_PUBLISHED)
            deployment = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
            assert await api.predict(deployment) == b'"ok"'  # 20 MB printed
            replica_log = settings.data_dir / "logs" / f"{deployment.replicas[0].id}.log"
            # 8 x 64 kB of burst and a few seconds' rate, not 20 MB.
            assert replica_log.stat().st_size < 2_000_000

            async def listed(**fields) -> list[ls.LogRecord]:
                request = ls.ListLogsRequest(filter=ls.LogFilter(deployment_id=deployment.id, **fields), page_size=10)
                return list((await logs.ListLogs(request)).records)

            [cut] = await wait_until(lambda: listed(text="wwww"), 20, "the long line")
            assert len(cut.message.encode()) <= 4096 and cut.message.endswith("bytes cut]")
            await wait_until(lambda: listed(text="done flooding"), 20, "the line after the flood")

            async def every(text: str) -> list[ls.LogRecord]:
                found, request = (
                    [],
                    ls.ListLogsRequest(filter=ls.LogFilter(deployment_id=deployment.id, text=text), page_size=1000),
                )
                while True:
                    page = await logs.ListLogs(request)
                    found += page.records
                    if not page.next_page_token:
                        return found
                    request.page_token = page.next_page_token

            notes = await every("log records (")
            assert notes and all(note.level == ls.LOG_LEVEL_WARNING and "dropped" in note.message for note in notes)
            dropped = sum(int(note.message.split(" ", 1)[0]) for note in notes)
            kept = len(await every("flood "))
            assert kept + dropped == 20_000 and kept < 2_000
    finally:
        await stop_or_explain(controller.stop(), "controller")


def test_the_log_flags_reach_the_controller_s_settings(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from slipway import cli

    seen = []

    async def run_controller(settings):
        seen.append(settings.logs)

    monkeypatch.setattr("controller.server.run_controller", run_controller)
    monkeypatch.setattr(cli, "configure_logs", lambda level: None)
    flags = ["--log-retention-bytes", "2000000", "--log-retention-seconds", "3600", "--log-line-bytes", "512"]
    env = {"SLIPWAY_LOG_RATE_BYTES": "4096"}
    result = CliRunner().invoke(cli.cli, ["controller", "--data-dir", str(tmp_path / "d"), *flags], env=env)
    assert result.exit_code == 0, result.output
    assert seen == [
        LogSettings(Retention(2_000_000, 3600.0), CollectorSettings(max_line_bytes=512), replica_rate_bytes=4096)
    ]
    refused = CliRunner().invoke(cli.cli, ["controller", "--log-line-bytes", "10"])
    assert refused.exit_code == 2 and "--log-line-bytes" in refused.output
