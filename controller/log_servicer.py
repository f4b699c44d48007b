"""LogService: protobuf in, a log query, protobuf out; and where log files belong.

A deployment or model is looked up in the lifecycle store with its deleted ones too:
their records stay until retention ends. The scope is that of the other read methods of
a model (deploy; see controller/keys.py), and a key limited to models sees only theirs.
"""

from __future__ import annotations

import pathlib
import time

from google.protobuf.timestamp_pb2 import Timestamp

from controller import log_records
from controller.errors import InvalidArgument, NotFound, ResourceExhausted
from controller.keys import require_model_access
from controller.log_records import LEVELS, LogQuery, LogRecord, Source
from controller.log_store import LogStore
from controller.status import map_domain_errors
from controller.store import Store
from slipway.v1 import log_service_pb2 as ls
from slipway.v1 import log_service_pb2_grpc as ls_grpc

# proto LogLevel → Python's level, and back.
LEVEL_OF = {
    ls.LOG_LEVEL_DEBUG: LEVELS["debug"],
    ls.LOG_LEVEL_INFO: LEVELS["info"],
    ls.LOG_LEVEL_WARNING: LEVELS["warning"],
    ls.LOG_LEVEL_ERROR: LEVELS["error"],
    ls.LOG_LEVEL_CRITICAL: LEVELS["critical"],
}
STREAM_OF = {
    log_records.STDOUT: ls.LOG_STREAM_STDOUT,
    log_records.STDERR: ls.LOG_STREAM_STDERR,
    log_records.LOGGING: ls.LOG_STREAM_LOGGING,
    log_records.SERVER: ls.LOG_STREAM_SERVER,
    log_records.BUILD: ls.LOG_STREAM_BUILD,
}
TAIL_BATCH = 500
# A tail re-checks for records this often even without being woken (a missed wake costs a delay, not a line).
TAIL_RECHECK_SECONDS = 1.0
MAX_TAILS = 100


def level_to_proto(level: int) -> int:
    found = ls.LOG_LEVEL_DEBUG
    for proto, python in LEVEL_OF.items():
        if level >= python:
            found = proto
    return found


def record_to_proto(record: LogRecord) -> ls.LogRecord:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(record.time * 1e9))
    return ls.LogRecord(
        time=stamp,
        level=level_to_proto(record.level),  # type: ignore[arg-type]
        stream=STREAM_OF.get(record.stream, ls.LOG_STREAM_UNSPECIFIED),
        model_id=record.model_id,
        deployment_id=record.deployment_id,
        replica_id=record.replica_id,
        request_id=record.request_id,
        logger=record.logger,
        message=record.message,
    )


@map_domain_errors
class LogServicer(ls_grpc.LogServiceServicer):
    def __init__(self, logs: LogStore, store: Store) -> None:
        self.logs = logs
        self.store = store
        self.tails = 0

    async def _query(self, request_filter: ls.LogFilter, newest_first: bool = True) -> LogQuery:
        f = request_filter
        start = _seconds(f.start_time) if f.HasField("start_time") else None
        end = _seconds(f.end_time) if f.HasField("end_time") else None
        log_records.check_filter(f.request_id, f.text, start, end)
        if f.min_level and f.min_level not in LEVEL_OF:
            raise InvalidArgument("INVALID_LOG_LEVEL", f"min_level {f.min_level} is not a LogLevel")
        if bool(f.deployment_id) == bool(f.model_id):
            raise InvalidArgument("LOG_TARGET_REQUIRED", "name exactly one of deployment_id and model_id")
        deployment_id = model_id = ""
        if f.deployment_id:
            deployment = await self.store.get_deployment(f.deployment_id)
            if deployment is None:
                raise NotFound(
                    "DEPLOYMENT_NOT_FOUND", f"no deployment {f.deployment_id!r}", deployment_id=f.deployment_id
                )
            require_model_access(deployment.model_id)
            deployment_id = deployment.id
        else:
            model = await self.store.get_model(f.model_id)
            if model is None:
                raise NotFound("MODEL_NOT_FOUND", f"no model {f.model_id!r}", model_id=f.model_id)
            require_model_access(model.id)
            model_id = model.id
        return LogQuery(
            deployment_id=deployment_id,
            model_id=model_id,
            start_time=start,
            end_time=end,
            min_level=LEVEL_OF.get(f.min_level, 0),
            request_id=f.request_id,
            text=f.text,
            build=f.build,
            newest_first=newest_first,
        )

    async def ListLogs(self, request, context):
        if request.order not in (ls.LOG_ORDER_UNSPECIFIED, ls.LOG_ORDER_NEWEST_FIRST, ls.LOG_ORDER_OLDEST_FIRST):
            raise InvalidArgument("INVALID_LOG_ORDER", f"order {request.order} is not a LogOrder")
        query = await self._query(request.filter, request.order != ls.LOG_ORDER_OLDEST_FIRST)
        page = await self.logs.list_records(query, log_records.log_page_size(request.page_size), request.page_token)
        return ls.ListLogsResponse(
            records=[record_to_proto(r) for r in page.records], next_page_token=page.next_page_token
        )

    async def TailLogs(self, request, context):
        query = await self._query(request.filter, newest_first=False)
        count = log_records.initial_count(request.initial_count)
        if self.tails >= MAX_TAILS:
            raise ResourceExhausted("TOO_MANY_LOG_TAILS", f"at most {MAX_TAILS} TailLogs calls may be open at once")
        self.tails += 1
        try:
            last = await self.logs.last_id()
            for record in await self.logs.newest(query, count):
                yield ls.TailLogsResponse(record=record_to_proto(record))
            while True:
                # Up to a mark taken first: a record stored during the query waits for the next round.
                mark = await self.logs.last_id()
                records = await self.logs.after(query, last, mark, TAIL_BATCH)
                for record in records:
                    yield ls.TailLogsResponse(record=record_to_proto(record))
                if len(records) == TAIL_BATCH:
                    last = records[-1].id
                    continue
                last = mark
                await self.logs.wait_for_records(TAIL_RECHECK_SECONDS)
        finally:
            self.tails -= 1


def _seconds(stamp: Timestamp) -> float:
    return stamp.ToNanoseconds() / 1e9


class SourceResolver:
    """Which model and deployment a log file's lines belong to, from the lifecycle store
    (a replica's file is named after the replica, a build's after its deployment)."""

    UNKNOWN_RETRY_SECONDS = 5.0
    MAX_CACHED = 10_000

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[tuple[str, bool], Source] = {}
        self._unknown: dict[tuple[str, bool], float] = {}

    async def __call__(self, path: pathlib.Path, build: bool) -> Source | None:
        key = (path.stem, build)
        if key in self._known:
            return self._known[key]
        if time.monotonic() - self._unknown.get(key, -1e9) < self.UNKNOWN_RETRY_SECONDS:
            return None
        source = await self._look_up(path.stem, build)
        if len(self._known) >= self.MAX_CACHED:
            self._known.clear()
        if len(self._unknown) >= self.MAX_CACHED:
            self._unknown.clear()
        if source is None:
            self._unknown[key] = time.monotonic()
        else:
            self._unknown.pop(key, None)
            self._known[key] = source
        return source

    async def _look_up(self, name: str, build: bool) -> Source | None:
        deployment_id = name if build else await self.store.replica_deployment_id(name)
        if deployment_id is None:
            return None
        deployment = await self.store.get_deployment(deployment_id)
        if deployment is None:
            return None
        return Source(deployment.model_id, deployment.id, "" if build else name)
