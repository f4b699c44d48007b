"""`slipway top`: a live view per deployment (replicas ready/desired, in flight, req/s,
p50/p99, errors), refreshed every second from the /metrics endpoints of the controller
(replicas) and of one or more gateways (requests).

Rates and percentiles are over the last interval: two scrapes `--interval` apart (with
`--once`, exactly two, then one frame is printed). Percentiles are interpolated within
the histogram's buckets, as Prometheus's histogram_quantile does; a deployment with no
request in the interval shows "-"."""

from __future__ import annotations

import math
import ssl
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import click
from prometheus_client.parser import text_string_to_metric_families

from slipway.command_support import root_api_key
from slipway.tls import dialable_host

DEFAULT_CONTROLLER_HTTP_PORT = 7180
DEFAULT_GATEWAY_METRICS = "http://127.0.0.1:7280/metrics"
MAX_SCRAPE_BYTES = 16 * 1024 * 1024
LATENCY = "slipway_inference_duration_seconds_bucket"
REQUESTS = "slipway_inference_requests_total"


@dataclass
class Stats:
    """One deployment in one scrape (gateways summed)."""

    model_id: str = ""
    environment: str = ""
    ready: int = 0
    desired: int = 0
    in_flight: int = 0
    requests: float = 0.0
    errors: float = 0.0
    # upper bound -> cumulative count, of slipway_inference_duration_seconds (all protocols)
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))


def is_error(labels: Mapping[str, str]) -> bool:
    status, code = labels.get("status_code", ""), labels.get("grpc_code", "")
    return (code not in ("", "OK")) or (status != "" and not status.startswith("2"))


def read(texts: Iterable[str]) -> dict[str, Stats]:
    """Deployment ID -> its figures, from the expositions of the controller and gateways."""
    stats: dict[str, Stats] = defaultdict(Stats)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                deployment_id = labels.get("deployment_id")
                if not deployment_id:
                    continue
                entry = stats[deployment_id]
                entry.model_id = labels.get("model_id", entry.model_id)
                entry.environment = labels.get("environment", entry.environment)
                name, value = sample.name, sample.value
                if name == "slipway_deployment_replicas" and labels.get("phase") == "ready":
                    entry.ready += int(value)
                elif name == "slipway_deployment_desired_replicas":
                    entry.desired = int(value)
                elif name == "slipway_inference_in_flight":
                    entry.in_flight += int(value)
                elif name == REQUESTS:
                    entry.requests += value
                    entry.errors += value if is_error(labels) else 0.0
                elif name == LATENCY:
                    entry.buckets[float(labels["le"])] += value
    return dict(stats)


def quantile(q: float, buckets: Mapping[float, float]) -> float:
    """The q-quantile of a histogram's cumulative buckets (linear within a bucket); NaN if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # above the highest finite bucket: its bound, as Prometheus answers
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class Row:
    deployment_id: str
    model_id: str
    environment: str
    ready: int
    desired: int
    in_flight: int
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors_per_s: float
    requests: float


def rows(before: Mapping[str, Stats], after: Mapping[str, Stats], seconds: float) -> list[Row]:
    """The rows of one frame: rates and percentiles over the `seconds` between two scrapes."""
    result = []
    for deployment_id, now in sorted(after.items(), key=lambda item: (item[1].model_id, item[0])):
        then = before.get(deployment_id, Stats())
        window = {le: now.buckets[le] - then.buckets.get(le, 0.0) for le in now.buckets}
        span = seconds if seconds > 0 else math.nan
        result.append(
            Row(
                deployment_id,
                now.model_id,
                now.environment,
                now.ready,
                now.desired,
                now.in_flight,
                max(now.requests - then.requests, 0.0) / span,
                quantile(0.5, window) * 1000,
                quantile(0.99, window) * 1000,
                max(now.errors - then.errors, 0.0) / span,
                now.requests,
            )
        )
    return result


HEADER = ("DEPLOYMENT", "MODEL", "ENV", "READY/DESIRED", "IN FLIGHT", "REQ/S", "P50 MS", "P99 MS", "ERR/S", "TOTAL")


def render(frame: list[Row], sources: int, failures: list[str]) -> str:
    def number(value: float, digits: int = 1) -> str:
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    cells = [
        (
            row.deployment_id,
            row.model_id,
            row.environment,
            f"{row.ready}/{row.desired}",
            str(row.in_flight),
            number(row.req_per_s),
            number(row.p50_ms),
            number(row.p99_ms),
            number(row.errors_per_s),
            f"{row.requests:.0f}",
        )
        for row in frame
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(HEADER, *cells, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (HEADER, *cells)
    ]
    if not cells:
        lines.append("(no deployments)")
    lines.append(f"{time.strftime('%H:%M:%S')}  {sources} /metrics endpoint(s)")
    lines.extend(f"! {failure}" for failure in failures)
    return "\n".join(lines)


def scrape(url: str, api_key: str, ca_file: Path | None) -> str:
    headers = {"Authorization": f"Api-Key {api_key}"} if api_key else {}
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return response.read(MAX_SCRAPE_BYTES).decode("utf-8")


def scrape_all(urls: list[str], api_key: str, ca_file: Path | None) -> tuple[list[str], list[str]]:
    texts, failures = [], []
    for url in urls:
        try:
            texts.append(scrape(url, api_key, ca_file))
        except urllib.error.HTTPError as error:
            failures.append(f"{url}: HTTP {error.code} {error.read(300).decode(errors='replace')}")
        except (OSError, ValueError) as error:
            failures.append(f"{url}: {error}")
    return texts, failures


@click.command()
@click.option(
    "--controller-metrics",
    metavar="URL",
    help="The controller's /metrics (default: http://<--controller host>:7180/metrics).",
)
@click.option(
    "--gateway-metrics",
    "gateway_urls",
    metavar="URL",
    multiple=True,
    help=f"A gateway's /metrics; repeat for several gateways (default {DEFAULT_GATEWAY_METRICS}).",
)
@click.option(
    "--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True, help="Seconds between frames."
)
@click.option("--once", is_flag=True, help="Print one frame (two scrapes an interval apart) and exit.")
def top(controller_metrics: str | None, gateway_urls: tuple[str, ...], interval: float, once: bool) -> None:
    """Live per-deployment view: replicas ready/desired, in flight, req/s, p50/p99, errors.

    Needs a key with the metrics scope (or admin): --api-key, SLIPWAY_API_KEY, or the
    local admin key."""
    root = click.get_current_context().find_root().params
    ca_file = root.get("tls_ca")
    scheme = "https" if ca_file else "http"
    if controller_metrics is None:
        host = dialable_host(str(root.get("controller", "127.0.0.1:7100")).rsplit(":", 1)[0])
        controller_metrics = f"{scheme}://{host}:{DEFAULT_CONTROLLER_HTTP_PORT}/metrics"
    urls = [controller_metrics, *(gateway_urls or (DEFAULT_GATEWAY_METRICS,))]
    api_key = root_api_key()
    texts, failures = scrape_all(urls, api_key, ca_file)
    before, taken = read(texts), time.monotonic()
    try:
        while True:
            time.sleep(interval)
            texts, failures = scrape_all(urls, api_key, ca_file)
            after, now = read(texts), time.monotonic()
            frame = render(rows(before, after, now - taken), len(urls), failures)
            if once:
                click.echo(frame)
                if len(failures) == len(urls):
                    raise click.ClickException("no /metrics endpoint answered")
                return
            click.echo("\x1b[H\x1b[2J" + frame, nl=True)
            before, taken = after, now
    except KeyboardInterrupt:
        return
