"""Lifecycle API benchmark: a real controller with 10,000 deployments in its database, on
SQLite and then on PostgreSQL (a local server this script starts), in one run.

    .venv/bin/python bench/lifecycle.py            # full run (~1-3 minutes on 2 cores)
    .venv/bin/python bench/lifecycle.py --quick    # smaller counts, a smoke run

What it does (see bench/README.md):

1. Seeds 10,000 inactive published deployments (100 models x 100) straight into the
   controller's database with the controller's own store module
   (controller.store's open_store / WriteTx), *before* the controller starts. Pushing them through the API would start 10,000 replica processes.
2. Starts the controller as a subprocess (`python -m slipway controller --database …`) on a free
   port, so the benchmark client does not share its event loop or its GIL.
3. Measures reads (GetDeployment, ListDeployments) with those 10,000 deployments in
   the database, at concurrency 1 and 8.
4. Measures lifecycle writes through the gRPC API on inactive deployments (rename,
   autoscaling update with a field mask, no-op deactivate, delete), then real pushes
   of a published deployment each followed by DeactivateDeployment (these start and
   stop replica processes).

It prints figures only; nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from google.protobuf import field_mask_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from bench.common import free_port, machine_info  # noqa: E402
from controller.domain import AutoscalingSettings, Deployment, Kind, State  # noqa: E402
from controller.packages import PackageStore  # noqa: E402
from controller.store import default_database_url, new_id, open_store  # noqa: E402
from slipway.packaging import archive_package  # noqa: E402
from slipway.v1 import deployment_service_pb2 as ds  # noqa: E402
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc  # noqa: E402
from slipway.v1 import resources_pb2 as r  # noqa: E402
from tests.pg_server import PostgresServer, Unavailable  # noqa: E402

BENCH_MODEL = """
class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        pass

    def predict(self, model_input):
        return model_input
"""


# --- measurement ------------------------------------------------------------------------


@dataclass
class Figure:
    op: str
    count: int
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: int = 0
    note: str = ""

    @property
    def ops_per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[index] * 1000


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) of process `root`, its reaped children and its live descendants."""
    ticks = 0
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            stats[int(entry.name)] = fields
    todo, seen = [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        fields = stats[pid]
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        todo += [child for child, parent in parents.items() if parent == pid]
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """Where the CPU of a measurement went: the controller's process tree, the database
    server's (PostgreSQL only), this client; and the machine's load average."""

    controller: int = 0
    database: int = 0

    def read(self) -> tuple[float, float, float]:
        return (
            cpu_seconds(self.controller) if self.controller else 0.0,
            cpu_seconds(self.database) if self.database else 0.0,
            time.process_time(),
        )


METER = CpuMeter()


async def run_load(
    op: str, count: int, concurrency: int, call: Callable[[int], Awaitable[None]], note: str = ""
) -> Figure:
    """Run `call(i)` for i in range(count) with `concurrency` workers; time each call."""
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < count:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                await call(i)
            except grpc.aio.AioRpcError as exc:
                errors += 1
                if errors <= 3:
                    print(f"  ! {op} #{i}: {exc.code().name}: {exc.details()}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - start)

    cpu_before = METER.read()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    cpu = [(after - before) * 1000 / count for after, before in zip(METER.read(), cpu_before, strict=True)]
    figure = Figure(op, count, concurrency, seconds, latencies, errors, note)
    print(
        f"  {op:<44} n={count:<5} c={concurrency}  {figure.ops_per_second:8.1f} ops/s  "
        f"p50 {figure.percentile(50):6.2f} ms  p99 {figure.percentile(99):6.2f} ms"
        + (f"  ({errors} errors)" if errors else "")
        + f"\n      CPU per call: controller {cpu[0]:.2f} ms, database server {cpu[1]:.2f} ms, "
        f"client {cpu[2]:.2f} ms; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return figure


# --- seeding ----------------------------------------------------------------------------


@dataclass
class Seeded:
    model_ids: list[str]
    deployment_ids: list[str]
    seconds: float


def write_package(root: pathlib.Path, model_name: str) -> pathlib.Path:
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(f"model_name: {model_name}\nrequirements: []\n")
    (root / "model" / "model.py").write_text(textwrap.dedent(BENCH_MODEL))
    return root


async def seed(database: str, data_dir: pathlib.Path, package_dir: pathlib.Path, models: int, per_model: int) -> Seeded:
    """Insert inactive published deployments with the controller's own store module.

    Runs before the controller starts, on the same data directory, so the controller
    opens a database that already holds them (the schema is the one open_store migrates).
    The package is stored for real, so each seeded deployment could be activated.
    """
    archive, digest = archive_package(package_dir)
    PackageStore(data_dir / "packages").add(archive, digest)
    store = await open_store(database)
    model_ids: list[str] = []
    deployment_ids: list[str] = []
    start = time.perf_counter()
    try:
        for m in range(models):
            async with store.write() as tx:
                at = time.time()
                model = await tx.insert_model(f"bench-model-{m:03d}", at)
                await tx.record_package(digest, len(archive), at)  # after the model's lock (store/locks.py)
                for n in range(1, per_model + 1):
                    deployment = Deployment(
                        id=new_id("d"),
                        model_id=model.id,
                        name=f"deployment-{n}",
                        kind=Kind.PUBLISHED,
                        active=False,
                        autoscaling=AutoscalingSettings(),
                        package_digest=digest,
                        revision=1,
                        create_time=at,
                        update_time=at,
                        state=State.INACTIVE,
                    )
                    await tx.insert_deployment(deployment)
                    deployment_ids.append(deployment.id)
                await tx.update_model(model.id, at, next_deployment_number=per_model + 1)
                await tx.add_event(at, model.id, "", "model.created", "seeded by bench/lifecycle.py")
            model_ids.append(model.id)
        if database.startswith("postgres"):
            # What autovacuum does within a minute of a bulk load (the controller starts at once).
            await store.backend.reader.execute("ANALYZE")
    finally:
        await store.close()
    return Seeded(model_ids, deployment_ids, time.perf_counter() - start)


# --- controller subprocess --------------------------------------------------------------


async def wait_serving(address: str, process: subprocess.Popen, timeout: float = 60.0) -> float:
    start = time.perf_counter()
    deadline = start + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"controller exited with code {process.returncode} while starting")
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - start
            await asyncio.sleep(0.05)
    raise RuntimeError(f"controller at {address} not serving after {timeout:g}s")


def stop_controller(process: subprocess.Popen, timeout: float = 60.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        print("  ! controller did not stop on SIGTERM; killing it", file=sys.stderr)
        process.kill()
        process.wait()


# --- the benchmark ----------------------------------------------------------------------


async def bench_reads(stub: ds_grpc.DeploymentServiceStub, seeded: Seeded, calls: int, figures: list[Figure]) -> None:
    rng = random.Random(1)

    # Walk the whole listing once following next_page_token; keep the tokens so the
    # timed runs can ask for random pages (a token names "the page after row N").
    tokens = [""]
    start = time.perf_counter()
    total = 0
    while True:
        page = await stub.ListDeployments(ds.ListDeploymentsRequest(page_size=100, page_token=tokens[-1]))
        total += len(page.deployments)
        if not page.next_page_token:
            break
        tokens.append(page.next_page_token)
    walk = time.perf_counter() - start
    figures.append(
        Figure(
            "ListDeployments full walk (page_size 100)",
            len(tokens),
            1,
            walk,
            [walk],
            note=f"{total} deployments in {len(tokens)} pages",
        )
    )
    print(f"  full listing walk: {total} deployments, {len(tokens)} pages of 100 in {walk * 1000:.0f} ms", flush=True)

    start = time.perf_counter()
    token, pages, total = "", 0, 0
    while True:
        page = await stub.ListDeployments(ds.ListDeploymentsRequest(page_size=1000, page_token=token))
        pages += 1
        total += len(page.deployments)
        token = page.next_page_token
        if not token:
            break
    walk = time.perf_counter() - start
    figures.append(
        Figure(
            "ListDeployments full walk (page_size 1000)",
            pages,
            1,
            walk,
            [walk],
            note=f"{total} deployments in {pages} pages",
        )
    )
    print(f"  full listing walk: {total} deployments, {pages} pages of 1000 in {walk * 1000:.0f} ms", flush=True)

    ids = seeded.deployment_ids
    models = seeded.model_ids

    async def get(_: int) -> None:
        await stub.GetDeployment(ds.GetDeploymentRequest(deployment_id=rng.choice(ids)))

    async def list_page(_: int) -> None:
        page = await stub.ListDeployments(ds.ListDeploymentsRequest(page_size=100, page_token=rng.choice(tokens)))
        assert page.deployments

    async def list_model(_: int) -> None:
        page = await stub.ListDeployments(ds.ListDeploymentsRequest(model_id=rng.choice(models), page_size=100))
        assert page.deployments

    for concurrency in (1, 8):
        figures.append(await run_load("GetDeployment (random id)", calls, concurrency, get))
        figures.append(await run_load("ListDeployments (page 100, random page)", calls, concurrency, list_page))
        figures.append(await run_load("ListDeployments (model filter, page 100)", calls, concurrency, list_model))


async def bench_writes(
    stub: ds_grpc.DeploymentServiceStub,
    seeded: Seeded,
    args: argparse.Namespace,
    package_dir: pathlib.Path,
    figures: list[Figure],
) -> None:
    rng = random.Random(2)
    c = args.concurrency
    # Every op gets its own deployments, so a rename never collides with a delete.
    pool = list(seeded.deployment_ids)
    rng.shuffle(pool)

    def take(n: int) -> list[str]:
        taken, pool[:] = pool[:n], pool[n:]
        return taken

    def renamer(ids: list[str], prefix: str) -> Callable[[int], Awaitable[None]]:
        async def rename(i: int) -> None:
            deployment = r.Deployment(id=ids[i], name=f"{prefix}-{i}")
            await stub.UpdateDeployment(
                ds.UpdateDeploymentRequest(deployment=deployment, update_mask=field_mask_pb2.FieldMask(paths=["name"]))
            )

        return rename

    serial = max(1, args.writes // 2)
    figures.append(await run_load("UpdateDeployment rename", serial, 1, renamer(take(serial), "serial")))
    figures.append(await run_load("UpdateDeployment rename", args.writes, c, renamer(take(args.writes), "renamed")))

    scale_ids = [rng.choice(seeded.deployment_ids) for _ in range(args.writes)]
    mask = field_mask_pb2.FieldMask(paths=["autoscaling_settings.max_replica", "autoscaling_settings.scale_down_delay"])

    async def autoscale(i: int) -> None:
        settings = r.AutoscalingSettings(max_replica=1 + i % 8, scale_down_delay=60 * (1 + i % 10))
        await stub.UpdateDeployment(
            ds.UpdateDeploymentRequest(
                deployment=r.Deployment(id=scale_ids[i], autoscaling_settings=settings), update_mask=mask
            )
        )

    figures.append(await run_load("UpdateDeployment autoscaling (field mask)", args.writes, c, autoscale))

    noop_ids = [rng.choice(seeded.deployment_ids) for _ in range(args.writes)]

    async def deactivate_inactive(i: int) -> None:
        await stub.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=noop_ids[i]))

    figures.append(
        await run_load("DeactivateDeployment (already inactive, no-op)", args.writes, c, deactivate_inactive)
    )

    retry_ids = [rng.choice(seeded.deployment_ids) for _ in range(args.writes)]

    async def deactivate_with_request_id(i: int) -> None:
        await stub.DeactivateDeployment(
            ds.DeactivateDeploymentRequest(deployment_id=retry_ids[i], request_id=f"bench-{i}-{new_id('q')}")
        )

    figures.append(
        await run_load("DeactivateDeployment no-op + request_id", args.writes, c, deactivate_with_request_id)
    )

    delete_ids = take(args.deletes)

    async def delete(i: int) -> None:
        await stub.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=delete_ids[i]))

    figures.append(await run_load("DeleteDeployment (inactive)", args.deletes, c, delete))

    # Real pushes: each creates an active published deployment (the reconciler may start
    # a replica process for it), immediately deactivated (the replica is drained/stopped).
    archive, digest = archive_package(package_dir)

    async def push_and_deactivate(_: int) -> None:
        created = await stub.CreateDeployment(
            ds.CreateDeploymentRequest(package_archive=archive, package_sha256=digest, target=ds.PUSH_TARGET_PUBLISHED)
        )
        await stub.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=created.deployment.id))

    figures.append(
        await run_load(
            "CreateDeployment publish + DeactivateDeployment",
            args.pushes,
            args.push_concurrency,
            push_and_deactivate,
            note="pairs/s; replicas start and stop",
        )
    )


async def time_route_table(database: str, rounds: int = 3) -> Figure | None:
    """Cost of one full route-table rebuild (controller.routes) over the seeded database.

    The controller rebuilds the table gateways follow after changes; with every
    deployment in it, its cost grows with the deployment count. Measured in this
    process before the controller starts; skipped if the controller has no route table.
    """
    try:
        from controller.routes import RouteBroadcaster
    except ImportError:
        return None
    store = await open_store(database)
    try:
        broadcaster = RouteBroadcaster(store, lambda: [])
        build = getattr(broadcaster, "_build", None)
        if build is None:
            return None
        times, size = [], 0
        for version in range(1, rounds + 1):
            start = time.perf_counter()
            table = await build(version)
            times.append(time.perf_counter() - start)
            size = table.ByteSize()
    finally:
        await store.close()
    best = min(times)
    print(f"  route table rebuild: {best * 1000:.0f} ms (best of {rounds}), {size / 1024:.0f} KiB", flush=True)
    return Figure(
        "route table rebuild (controller.routes, in-process)",
        len(table.deployments),
        1,
        best,
        [best],
        note=f"best of {rounds}; {size / 1024:.0f} KiB per table version",
    )


async def replica_starts(database: str) -> tuple[int, int]:
    """(replicas ever started, replicas running), read from the controller's database."""
    store = await open_store(database)
    try:
        started = await store.backend.reader.fetchone("SELECT COUNT(*) FROM replicas")
        running = await store.backend.reader.fetchone("SELECT COUNT(*) FROM replicas WHERE stop_time IS NULL")
    finally:
        await store.close()
    return (started[0] if started else 0), (running[0] if running else 0)


async def wait_replicas_stopped(database: str, timeout: float) -> float:
    """Wait until no replica process is left running (all pushed deployments settled)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if (await replica_starts(database))[1] == 0:
            return time.perf_counter() - start
        await asyncio.sleep(0.2)
    return float("nan")


BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def render(results: dict[str, list[Figure]]) -> str:
    """Markdown: the throughput/latency table with a column group per backend, then the
    one-shot timings (seconds) per backend."""
    backends = list(results)
    first = results[backends[0]]

    def key(f: Figure) -> tuple[str, int, int]:
        return f.op, f.count, f.concurrency

    by_backend = {b: {key(f): f for f in figures} for b, figures in results.items()}
    timed = [f for f in first if len(f.latencies) > 1 or f.errors]
    once = [f for f in first if f not in timed]
    names = [BACKEND_NAMES[b] for b in backends]
    lines = [
        "| op | count | concurrency | " + " | ".join(f"{n} ops/s | {n} p50 ms | {n} p99 ms" for n in names) + " |",
        "|---|---:|---:|" + "---:|---:|---:|" * len(backends),
    ]
    for f in timed:
        name = f.op + (f" ({f.note})" if f.note else "")
        cells = []
        for b in backends:
            g = by_backend[b].get(key(f))
            if g is None:
                cells.append("– | – | –")
                continue
            errors = f" [{g.errors} errors]" if g.errors else ""
            cells.append(f"{g.ops_per_second:.0f}{errors} | {g.percentile(50):.2f} | {g.percentile(99):.2f}")
        lines.append(f"| {name} | {f.count} | {f.concurrency} | " + " | ".join(cells) + " |")
    if once:
        lines += [
            "",
            "| one-shot step | items | " + " | ".join(f"{n} s" for n in names) + " | notes |",
            "|---|---:|" + "---:|" * len(backends) + "---|",
        ]
        for f in once:
            cells = [f"{by_backend[b][key(f)].seconds:.3f}" if key(f) in by_backend[b] else "–" for b in backends]
            lines.append(f"| {f.op} | {f.count} | " + " | ".join(cells) + f" | {f.note} |")
    return "\n".join(lines)


async def run_backend(args: argparse.Namespace, backend: str, database: str, tmp_path: pathlib.Path) -> list[Figure]:
    """The whole benchmark against one database: seed, start the controller on it, measure."""
    figures: list[Figure] = []
    data_dir = tmp_path / backend / "data"
    package_dir = write_package(tmp_path / backend / "package", "bench-push")
    seed_package = write_package(tmp_path / backend / "seed-package", "bench-seed")

    total = args.models * args.per_model
    print(
        f"Seeding {total} inactive deployments ({args.models} models x {args.per_model}) directly into "
        f"{database} with controller.store (WriteTx.insert_model / insert_deployment), "
        "before the controller starts — not through the API, which would start a replica per push.",
        flush=True,
    )
    seeded = await seed(database, data_dir, seed_package, args.models, args.per_model)
    figures.append(
        Figure(
            "seed via controller.store (1 tx per model)",
            total,
            1,
            seeded.seconds,
            [seeded.seconds],
            note="not via the API",
        )
    )
    print(f"  seeded in {seeded.seconds:.2f} s ({total / seeded.seconds:.0f} deployments/s)", flush=True)
    route_figure = await time_route_table(database)
    if route_figure is not None:
        figures.append(route_figure)

    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path = tmp_path / backend / "controller.log"
    command = [
        sys.executable,
        "-m",
        "slipway",
        "controller",
        "--port",
        str(port),
        # Any free HTTP port: the default 7180 may be taken by anything else on the machine.
        "--controller-http-port",
        "0",
        "--data-dir",
        str(data_dir),
        "--database",
        database,
        "--log-level",
        args.log_level,
        # It measures the lifecycle API; what key checking costs is bench/auth.py's figure.
        "--insecure-no-auth",
    ]
    print(f"Starting controller: {' '.join(command)}", flush=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    METER.controller = process.pid
    try:
        ready = await wait_serving(address, process)
        figures.append(Figure(f"controller start to SERVING ({total} deployments in DB)", 1, 1, ready, [ready]))
        print(f"  serving after {ready:.2f} s", flush=True)
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = ds_grpc.DeploymentServiceStub(channel)
            print(f"Reads with {total} deployments in the database:", flush=True)
            await bench_reads(stub, seeded, args.reads, figures)
            print("Lifecycle writes through the gRPC API:", flush=True)
            await bench_writes(stub, seeded, args, package_dir, figures)
            started, running = await replica_starts(database)
            print(
                f"  pushes started {started} replica processes; {running} still running; waiting for them to stop",
                flush=True,
            )
            settle = await wait_replicas_stopped(database, timeout=60)
            print(f"  all replicas stopped after {settle:.1f} s more", flush=True)
    finally:
        stop_started = time.perf_counter()
        stop_controller(process)
        stopped = time.perf_counter() - stop_started
        if process.returncode not in (0, -signal.SIGTERM):
            print(f"  ! controller exit code {process.returncode}; log tail:", file=sys.stderr)
            print(log_path.read_text()[-3000:], file=sys.stderr)
    print(f"  controller stopped (SIGTERM) in {stopped:.2f} s, exit code {process.returncode}", flush=True)
    return figures


async def main(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    results: dict[str, list[Figure]] = {}
    versions = [f"SQLite {sqlite3.sqlite_version}"]
    with tempfile.TemporaryDirectory(prefix="slipway-bench-") as tmp:
        tmp_path = pathlib.Path(tmp)
        for backend in args.backends:
            print(f"=== {BACKEND_NAMES[backend]} ===", flush=True)
            METER.database = 0
            if backend == "sqlite":
                results[backend] = await run_backend(
                    args, backend, default_database_url(tmp_path / backend / "data"), tmp_path
                )
                continue
            try:
                # PostgreSQL's defaults (fsync, synchronous_commit on): what a deployment would run.
                server = PostgresServer.start(durable=True)
            except Unavailable as exc:
                print(f"  PostgreSQL column skipped: {exc}", flush=True)
                continue
            try:
                versions.append(server.version())
                METER.database = server.pid()
                url = server.create_database("bench") + "".join(f"&{option}" for option in args.postgres_options)
                results[backend] = await run_backend(args, backend, url, tmp_path)
            finally:
                server.stop()
    if not results:
        return 1

    elapsed = time.perf_counter() - began
    total = args.models * args.per_model
    print()
    print("## Slipway lifecycle benchmark")
    print()
    for line in machine_info(", ".join(versions)):
        print(line)
    print(
        f"- controller: subprocess `python -m slipway controller --database …` (log level {args.log_level}); "
        f"client: grpc.aio, one channel, in this process; backends one after the other"
    )
    print(
        f"- {total} deployments seeded directly with controller.store before the controller started "
        f"(inactive, published; {args.models} models x {args.per_model})"
    )
    settings = "&".join(args.postgres_options) or "PostgreSQL's defaults (fsync, synchronous_commit on)"
    print(f"- PostgreSQL: a local server on a Unix socket (tests/pg_server.py); settings: {settings}")
    print(f"- total run time: {elapsed:.0f} s")
    print()
    print(render(results))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=100, help="models to seed (default 100)")
    parser.add_argument("--per-model", type=int, default=100, help="deployments per seeded model (default 100)")
    parser.add_argument("--reads", type=int, default=2000, help="calls per read measurement (default 2000)")
    parser.add_argument("--writes", type=int, default=1000, help="calls per update measurement (default 1000)")
    parser.add_argument("--deletes", type=int, default=500, help="DeleteDeployment calls (default 500)")
    parser.add_argument("--pushes", type=int, default=200, help="push+deactivate pairs (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="client concurrency for writes (default 8)")
    parser.add_argument("--push-concurrency", type=int, default=4, help="client concurrency for pushes (default 4)")
    parser.add_argument("--log-level", default="INFO", help="controller log level (default INFO, to a file)")
    parser.add_argument(
        "--backends",
        type=lambda v: [b for b in v.split(",") if b],
        default=["sqlite", "postgresql"],
        help="comma-separated: sqlite, postgresql (default both, one after the other)",
    )
    parser.add_argument(
        "--postgres-options",
        type=lambda v: [o for o in v.split("&") if o],
        default=[],
        help="PostgreSQL settings added to the database URL, e.g. synchronous_commit=off",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run in a few seconds")
    args = parser.parse_args()
    unknown = set(args.backends) - set(BACKEND_NAMES)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}: choose from {sorted(BACKEND_NAMES)}")
    if args.quick:
        args.models, args.per_model, args.reads, args.writes, args.deletes, args.pushes = 10, 20, 100, 50, 20, 10
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
