"""The schema, written once: numbered migrations applied in order at start, the same on
every backend. They are written in SQLite's dialect; `for_postgres` rewrites the few type
names PostgreSQL spells differently (64-bit integers and floats, bytes, identity keys).

Rows are never removed: deleted models and deployments keep their rows (with delete_time
set), so IDs are never reused and usage survives. Keys come from AUTOINCREMENT / identity
columns, which never hand out a number twice.
"""

from __future__ import annotations

import re

from controller.store.backend import StoreOpenError

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE models (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        production_deployment_id TEXT,
        development_deployment_id TEXT,
        promoting_deployment_id TEXT,
        next_deployment_number INTEGER NOT NULL DEFAULT 1,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        delete_time REAL
    );
    CREATE UNIQUE INDEX models_live_name ON models(name) WHERE delete_time IS NULL;

    CREATE TABLE deployments (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        model_id TEXT NOT NULL REFERENCES models(id),
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        active INTEGER NOT NULL,
        autoscaling TEXT NOT NULL,
        package_digest TEXT NOT NULL,
        revision INTEGER NOT NULL DEFAULT 1,
        state TEXT NOT NULL,
        status_message TEXT NOT NULL DEFAULT '',
        desired_replicas INTEGER NOT NULL DEFAULT 0,
        ready_replicas INTEGER NOT NULL DEFAULT 0,
        source_deployment_id TEXT,
        failed_revision INTEGER,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        delete_time REAL
    );
    CREATE UNIQUE INDEX deployments_live_name ON deployments(model_id, name) WHERE delete_time IS NULL;
    CREATE INDEX deployments_by_model ON deployments(model_id, pk);

    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        deployment_id TEXT NOT NULL REFERENCES deployments(id),
        revision INTEGER NOT NULL,
        pid INTEGER,
        port INTEGER,
        start_time REAL NOT NULL,
        ready_time REAL,
        stop_time REAL
    );
    CREATE INDEX replicas_by_deployment ON replicas(deployment_id);
    CREATE INDEX replicas_running ON replicas(stop_time) WHERE stop_time IS NULL;

    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        create_time REAL NOT NULL,
        model_id TEXT NOT NULL,
        deployment_id TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_model ON events(model_id, seq);
    CREATE INDEX events_by_deployment ON events(deployment_id, seq);

    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        result TEXT NOT NULL,
        create_time REAL NOT NULL
    );

    CREATE TABLE packages (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        create_time REAL NOT NULL
    );
    """,
    # 2: what a request_id was used for, so reusing it for a different request is refused
    """
    ALTER TABLE requests ADD COLUMN fingerprint TEXT NOT NULL DEFAULT ''
    """,
    # 3: a live-reload patch that is not (yet) the package a development deployment serves
    """
    ALTER TABLE deployments ADD COLUMN patched_digest TEXT;
    ALTER TABLE deployments ADD COLUMN reload_error TEXT NOT NULL DEFAULT ''
    """,
    # 4: platform-managed secrets, encrypted by controller/secrets.py (the key is not in the database)
    """
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        ciphertext BLOB NOT NULL,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    )
    """,
    # 5: user API keys, by hash only (slipway/keys.py)
    """
    CREATE TABLE api_keys (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        scope TEXT NOT NULL,
        model_ids TEXT NOT NULL,
        key_sha256 BLOB NOT NULL,
        create_time REAL NOT NULL,
        last_used_time REAL,
        expire_time REAL,
        revoke_time REAL
    )
    """,
    # 6: the leader lease (controller/leader.py): one row; the token grows with every change of holder
    """
    CREATE TABLE leader_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        token INTEGER NOT NULL,
        expire_time REAL NOT NULL
    );
    INSERT INTO leader_lease (id, holder, token, expire_time) VALUES (1, '', 0, 0)
    """,
    # 7: reserved for named environments (branch `envs`, issue 16 item 1): its migration
    # takes this place when the branches merge; until then a no-op.
    """
    SELECT 1
    """,
    # 8: rolling promotions (controller/rollouts.py): a rollout policy per model and
    # environment, and every rollout with its state, step, weights and figures; at most one
    # in progress per model and environment.
    """
    CREATE TABLE rollout_policies (
        model_id TEXT NOT NULL REFERENCES models(id),
        environment TEXT NOT NULL,
        policy TEXT NOT NULL,
        update_time REAL NOT NULL,
        PRIMARY KEY (model_id, environment)
    );
    CREATE TABLE rollouts (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        model_id TEXT NOT NULL REFERENCES models(id),
        environment TEXT NOT NULL,
        candidate_deployment_id TEXT NOT NULL REFERENCES deployments(id),
        previous_deployment_id TEXT NOT NULL REFERENCES deployments(id),
        state TEXT NOT NULL,
        active INTEGER NOT NULL,
        record TEXT NOT NULL,
        keep_warm_until REAL,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    );
    CREATE UNIQUE INDEX rollouts_one_active ON rollouts(model_id, environment) WHERE active = 1;
    CREATE INDEX rollouts_by_model ON rollouts(model_id, environment, pk);
    CREATE INDEX rollouts_engine ON rollouts(active, keep_warm_until)
    """,
]


class SchemaTooNew(StoreOpenError):
    """The database was migrated by a newer Slipway: this one must not touch it."""

    def __init__(self, found: int, where: str) -> None:
        super().__init__(
            f"the database {where} has schema version {found}, newer than this Slipway knows ({len(MIGRATIONS)}): "
            "run the Slipway version that last used it (or newer); the database was left untouched"
        )
        self.found = found


def pending(version: int, where: str) -> list[tuple[int, str]]:
    """The migrations (number, script) a database at `version` still needs."""
    if version > len(MIGRATIONS):
        raise SchemaTooNew(version, where)
    return list(enumerate(MIGRATIONS[version:], start=version + 1))


def statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]


_POSTGRES_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),  # SQLite's INTEGER is 64-bit; PostgreSQL's is 32
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),  # SQLite's REAL is 64-bit; PostgreSQL's is 32
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


def for_postgres(script: str) -> str:
    for pattern, replacement in _POSTGRES_TYPES:
        script = pattern.sub(replacement, script)
    return script
