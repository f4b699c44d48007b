"""What the gateway's, the controller's and the replicas' Prometheus metrics share: the
buckets, the deployment labels, and the exposition answer of a `GET /metrics`.

Every server has a registry of its own (never prometheus_client's global one: tests run
several servers in one process, and a registry outlives nothing it does not own)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

if TYPE_CHECKING:  # replicas import the buckets and never serve HTTP: aiohttp stays off their start
    from aiohttp import web

METRICS_PATH = "/metrics"
# Labels naming a deployment on every per-deployment series.
DEPLOYMENT_LABELS = ("model_id", "deployment_id", "environment")
PRODUCTION = "production"
DEVELOPMENT = "development"
PUBLISHED = "published"
# Request durations: from a fast model through the gateway (a few ms) to a long generation.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Waits for a replica and cold starts: a forked replica in a fraction of a second, a large model in minutes.
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Controller internals: a SQLite write, a reconcile pass, a management call.
INTERNAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# Builds of a package's Python environment.
BUILD_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def environment_label(deployment_id: str, production_id: str, development_id: str) -> str:
    """production / development / published: what the deployment is to its model now."""
    if deployment_id == production_id:
        return PRODUCTION
    if deployment_id == development_id:
        return DEVELOPMENT
    return PUBLISHED


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus's text format (prometheus_client writes it)."""
    from aiohttp import web

    response = web.Response(body=generate_latest(registry))
    # Text format 0.0.4, which every Prometheus reads (the names and labels here are all plain ASCII).
    response.headers["Content-Type"] = CONTENT_TYPE_PLAIN_0_0_4
    return response
