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
    # 7: environments (controller/environments.py): production, which every model has, and named
    # ones; each routes to at most one deployment and has at most one promotion in flight. The
    # production deployment and promotion move here from the models table (one record for every
    # environment); autoscaling NULL means the operator's defaults. A deployment is in at most one
    # environment (the partial unique index). Events say which environment they concern.
    """
    CREATE TABLE environments (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        model_id TEXT NOT NULL REFERENCES models(id),
        name TEXT NOT NULL,
        deployment_id TEXT REFERENCES deployments(id),
        promoting_deployment_id TEXT REFERENCES deployments(id),
        autoscaling TEXT,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        delete_time REAL
    );
    CREATE UNIQUE INDEX environments_live_name ON environments(model_id, name) WHERE delete_time IS NULL;
    CREATE UNIQUE INDEX environments_live_deployment ON environments(deployment_id)
        WHERE delete_time IS NULL AND deployment_id IS NOT NULL;
    CREATE INDEX environments_promoting ON environments(promoting_deployment_id)
        WHERE delete_time IS NULL AND promoting_deployment_id IS NOT NULL;
    INSERT INTO environments (model_id, name, deployment_id, promoting_deployment_id, autoscaling,
                              create_time, update_time)
        SELECT m.id, 'production', m.production_deployment_id, m.promoting_deployment_id,
               (SELECT d.autoscaling FROM deployments d WHERE d.id = m.production_deployment_id),
               m.create_time, m.update_time
        FROM models m ORDER BY m.pk;
    ALTER TABLE models DROP COLUMN production_deployment_id;
    ALTER TABLE models DROP COLUMN promoting_deployment_id;
    ALTER TABLE events ADD COLUMN environment TEXT NOT NULL DEFAULT ''
    """,
    # 8: the deployments a reconcile pass looks at (after every commit), found without reading
    # every deployment: SqlStore.deployments_to_reconcile's predicate, word for word.
    """
    CREATE INDEX deployments_to_reconcile ON deployments(pk)
        WHERE (delete_time IS NULL AND active = 1) OR state NOT IN ('INACTIVE', 'DEPLOY_FAILED', 'BUILD_FAILED')
    """,
    # 9: the async request queue (controller/async_queue.py) and the models' webhook secrets
    """
    CREATE TABLE async_requests (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        model_id TEXT NOT NULL,
        deployment_id TEXT NOT NULL,
        route TEXT NOT NULL,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL,
        payload BLOB,
        content_type TEXT NOT NULL,
        create_time REAL NOT NULL,
        queue_deadline REAL NOT NULL,
        start_time REAL,
        finish_time REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_token INTEGER,
        output BLOB,
        output_content_type TEXT NOT NULL DEFAULT '',
        error_code TEXT NOT NULL DEFAULT '',
        error_reason TEXT NOT NULL DEFAULT '',
        error_message TEXT NOT NULL DEFAULT '',
        webhook_endpoint TEXT NOT NULL DEFAULT '',
        webhook_status TEXT NOT NULL,
        webhook_attempts INTEGER NOT NULL DEFAULT 0,
        webhook_next_time REAL,
        webhook_deadline REAL,
        webhook_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX async_requests_queued ON async_requests(deployment_id, priority, pk) WHERE status = 'QUEUED';
    CREATE INDEX async_requests_running ON async_requests(deployment_id) WHERE status = 'IN_PROGRESS';
    CREATE INDEX async_requests_webhooks ON async_requests(webhook_next_time) WHERE webhook_status = 'PENDING';
    CREATE INDEX async_requests_by_model ON async_requests(model_id, pk);
    CREATE INDEX async_requests_finished ON async_requests(finish_time);

    CREATE TABLE webhook_secrets (
        model_id TEXT PRIMARY KEY,
        ciphertext BLOB NOT NULL,
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    )
    """,
    # 10: rolling promotions (controller/rollouts.py): a rollout policy per model and
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
    # 11: a replica's HTTP predict route (replica/direct.py), which the native data plane
    # forwards HTTP inference to, beside its gRPC port.
    """
    ALTER TABLE replicas ADD COLUMN http_port INTEGER
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
