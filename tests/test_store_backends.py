"""The store on both backends: two store instances (two controllers' worth) writing to one
database at once still keep the rules that transactions check — one promotion in flight
per model, names unique per model, one model per name, request_id applied once — and a
database migrated by a newer Slipway is refused cleanly, by the store and by the CLI."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import subprocess
import sys

import pytest
from conftest import ECHO_MODEL, write_package
from pg_server import PostgresServer, Unavailable

from controller.domain import AutoscalingLimits, PushTarget
from controller.errors import Aborted, AlreadyExists
from controller.lifecycle import Lifecycle
from controller.packages import PackageStore
from controller.store import SchemaTooNew, SqlStore, default_database_url, open_store
from controller.store.schema import MIGRATIONS
from slipway.packaging import archive_package

pytestmark = pytest.mark.both_backends
CONTENDERS = 8


def lifecycles(stores: list[SqlStore], tmp_path: pathlib.Path) -> list[Lifecycle]:
    return [
        Lifecycle(store, PackageStore(tmp_path / f"packages{n}"), AutoscalingLimits()) for n, store in enumerate(stores)
    ]


def archive(tmp_path: pathlib.Path, model_name: str) -> tuple[bytes, str]:
    return archive_package(write_package(tmp_path / f"src-{model_name}", model_name, ECHO_MODEL.format(tag="v1")))


async def outcomes(calls) -> tuple[list, list[BaseException]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    return [r for r in results if not isinstance(r, BaseException)], [
        r for r in results if isinstance(r, BaseException)
    ]


async def published(lifecycle: Lifecycle, tmp_path: pathlib.Path, count: int) -> list:
    package, digest = archive(tmp_path, "m")
    return [(await lifecycle.push(package, digest, PushTarget.PUBLISHED, f"d{n}", "")).deployment for n in range(count)]


# Several rounds: the first also warms both stores' connections up (statements prepared), so
# the later ones race two transactions that really overlap.
ROUNDS = 4


async def test_one_promotion_in_flight_across_two_stores(stores, tmp_path):
    both = lifecycles(stores, tmp_path)
    candidates = await published(both[0], tmp_path, CONTENDERS + ROUNDS)
    for round_ in range(ROUNDS):
        # Not ready (no reconciler runs): each promote would start a promotion in flight.
        ok, refused = await outcomes(
            both[n % 2].promote(deployment.id, "") for n, deployment in enumerate(candidates[round_:])
        )
        assert len(ok) == 1, f"round {round_}: {len(ok)} promotions in flight at once"
        assert all(isinstance(e, Aborted) and e.reason == "PROMOTION_IN_PROGRESS" for e in refused), refused
        model = await stores[1].get_model("m")
        assert model is not None and model.promoting_deployment_id == ok[0].deployment.id
        # Deactivating the winner cancels its promotion; it sits out the next rounds.
        await both[round_ % 2].deactivate(ok[0].deployment.id, "")
        winner = next(c for c in candidates if c.id == ok[0].deployment.id)  # not equal: it was promoting then
        candidates.remove(winner)
        candidates.insert(0, winner)


async def test_names_stay_unique_per_model_across_two_stores(stores, tmp_path):
    both = lifecycles(stores, tmp_path)
    candidates = await published(both[0], tmp_path, CONTENDERS)
    for round_ in range(ROUNDS):
        ok, refused = await outcomes(
            both[n % 2].update_deployment(deployment.id, f"blue-{round_}", {}, "")
            for n, deployment in enumerate(candidates)
        )
        assert len(ok) == 1, f"round {round_}: {len(ok)} deployments named blue-{round_}"
        assert all(isinstance(e, AlreadyExists) and e.reason == "DEPLOYMENT_NAME_TAKEN" for e in refused), refused
    names = [d.name for d in await stores[0].model_deployments(candidates[0].model_id)]
    assert len(names) == len(set(names)) == CONTENDERS


async def test_concurrent_first_pushes_make_one_model_and_a_request_id_applies_once(stores, tmp_path):
    first, second = lifecycles(stores, tmp_path)
    package, digest = archive(tmp_path, "m")
    # Different request_ids: one model "m", every push a deployment of it.
    ok, errors = await outcomes(
        (first if n % 2 else second).push(package, digest, PushTarget.PUBLISHED, "", f"push-{n}")
        for n in range(CONTENDERS)
    )
    assert errors == [] and len({r.model.id for r in ok}) == 1
    assert sum(r.flag for r in ok) == 1  # exactly one push created the model
    assert sorted(r.deployment.name for r in ok) == [f"deployment-{n}" for n in range(1, CONTENDERS + 1)]
    # One request_id from both stores at once: applied once, the same answer to every caller.
    ok, errors = await outcomes(
        (first if n % 2 else second).push(package, digest, PushTarget.PUBLISHED, "", "once") for n in range(CONTENDERS)
    )
    assert errors == [] and len({r.deployment.id for r in ok}) == 1
    assert len(await stores[0].model_deployments(ok[0].model.id)) == CONTENDERS + 1


async def set_schema_version(url: str, version: int) -> None:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(f"PRAGMA user_version = {version}")
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE slipway_schema SET version = $1", version)
    finally:
        await conn.close()


async def test_a_database_newer_than_the_code_is_refused_by_the_store_and_the_cli(database, tmp_path):
    data_dir = tmp_path / "data"
    url = database or default_database_url(data_dir)
    await (await open_store(url)).close()
    newer = len(MIGRATIONS) + 1
    await set_schema_version(url, newer)
    with pytest.raises(SchemaTooNew, match=f"schema version {newer}, newer than this Slipway knows"):
        await open_store(url)
    flags = ["--database", database] if database else []
    done = subprocess.run(
        [sys.executable, "-m", "slipway", "controller", "--port", "0", "--data-dir", str(data_dir), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"schema version {newer}, newer than this Slipway knows" in done.stderr
    assert "Traceback" not in done.stderr
    # Refused, not touched: the version is still the newer one.
    with pytest.raises(SchemaTooNew):
        await open_store(url)


def test_the_cli_refuses_a_database_url_it_cannot_use(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "slipway", "controller", "--data-dir", str(tmp_path), "--database", "mysql://db/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "'mysql' is not a database this controller uses" in done.stderr, done.stderr


def test_database_urls_are_checked_and_passwords_kept_out_of_descriptions():
    from controller.store import BadDatabaseUrl, check_database_url
    from controller.store.postgres import describe

    assert check_database_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert check_database_url("postgres://u@h/db") == "postgres://u@h/db"
    for bad in ("sqlite://", "sqlite:///", "mysql://h/db", "/var/lib/slipway.db"):
        with pytest.raises(BadDatabaseUrl):
            check_database_url(bad)
    assert (
        describe("postgresql://u:hunter2@db:5432/s?sslmode=require") == "postgresql://u:***@db:5432/s?sslmode=require"
    )
    assert describe("postgresql://u@/s?host=/run&password=hunter2") == "postgresql://u@/s?host=/run&password=***"
    assert describe("postgresql://u@db/s") == "postgresql://u@db/s"


async def test_a_postgresql_restart_fails_no_store_call():
    """Connections that died while idle (the server restarted) are replaced, and the
    call that found one dead is carried out on a new one: a write's BEGIN, or a read."""
    try:
        server = await asyncio.to_thread(PostgresServer.start)
    except Unavailable as exc:
        pytest.skip(f"PostgreSQL half skipped: {exc}")
    try:
        store = await open_store(await asyncio.to_thread(server.create_database, "restart"))
        try:
            async with store.write() as tx:
                await tx.insert_model("before", 1.0)
            assert await store.get_model("before") is not None
            # Restarted while this event loop is blocked: the store has not yet seen its
            # connections close when the next call comes (the race a busy controller meets).
            server.restart()
            async with store.write() as tx:
                await tx.insert_model("after", 2.0)
            assert {m.name for m in (await store.list_models(10, "")).items} == {"before", "after"}
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(server.stop)
