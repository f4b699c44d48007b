"""Migration 7 on both backends: a database written by the schema before environments (version 6),
with a production deployment and a promotion in flight, keeps them as its production
environment's, and the inherited settings are the production deployment's."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3

import pytest

from controller.store import open_store
from controller.store.schema import MIGRATIONS, for_postgres, statements

SETTINGS = {
    "min_replica": 0,
    "max_replica": 3,
    "autoscaling_window": 60,
    "scale_down_delay": 900,
    "concurrency_target": 1,
    "target_utilization_percentage": 70,
}
ROWS = [
    "INSERT INTO models (id, name, production_deployment_id, development_deployment_id, promoting_deployment_id, "
    "create_time, update_time) VALUES ('m1', 'shop', 'd1', NULL, 'd2', 1, 1)",
    "INSERT INTO models (id, name, create_time, update_time) VALUES ('m2', 'empty', 2, 2)",
    *(
        "INSERT INTO deployments (id, model_id, name, kind, active, autoscaling, package_digest, state, "
        f"create_time, update_time) VALUES ('{d}', 'm1', 'deployment-{n}', 'published', 1, '{json.dumps(SETTINGS)}', "
        f"'{'a' * 64}', 'ACTIVE', 1, 1)"
        for n, d in ((1, "d1"), (2, "d2"))
    ),
    "INSERT INTO events (create_time, model_id, deployment_id, type, message) VALUES (1, 'm1', 'd1', 'x', 'y')",
]
_numbers = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
async def version_6(request, tmp_path) -> str:
    """A database URL at schema version 6, with ROWS in it."""
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as conn:
            for script in MIGRATIONS[:6]:
                for statement in statements(script):
                    conn.execute(statement)
            for row in ROWS:
                conn.execute(row)
            conn.execute("PRAGMA user_version = 6")
        return f"sqlite:///{path}"
    import asyncpg

    server = request.getfixturevalue("postgres_server")
    name = f"migrate_{os.getpid()}_{next(_numbers)}"
    url = server.create_database(name)
    request.addfinalizer(lambda: server.drop_database(name))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE slipway_schema (version BIGINT NOT NULL)")
        await conn.execute("INSERT INTO slipway_schema (version) VALUES (6)")
        for script in MIGRATIONS[:6]:
            for statement in statements(for_postgres(script)):
                await conn.execute(statement)
        for row in ROWS:
            await conn.execute(row)
    finally:
        await conn.close()
    return url


async def test_production_and_its_promotion_move_into_the_production_environment(version_6):
    store = await open_store(version_6)
    try:
        shop = await store.get_model("m1")
        assert shop is not None
        assert (shop.production_deployment_id, shop.promoting_deployment_id) == ("d1", "d2")
        production = await store.get_environment("m1", "production")
        assert production is not None and production.autoscaling is not None
        assert (production.deployment_id, production.promoting_deployment_id) == ("d1", "d2")
        assert production.autoscaling.max_replica == 3  # a promoted development deployment inherits these
        d1, d2 = await store.get_deployment("d1"), await store.get_deployment("d2")
        assert d1 is not None and (d1.environment, d1.is_production, d1.promoting_environment) == (
            "production",
            True,
            None,
        )
        assert d2 is not None and (d2.environment, d2.is_production, d2.promoting_environment) == (
            None,
            False,
            "production",
        )
        empty = await store.get_environment("m2", "production")
        assert empty is not None and (empty.deployment_id, empty.autoscaling) == (None, None)
        assert [e.name for e in await store.model_environments("m1")] == ["production"]
        events = await store.list_events("m1", "", 10, "")
        assert [(e.type, e.environment) for e in events.items] == [("x", "")]
    finally:
        await store.close()
