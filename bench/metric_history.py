"""The controller's in-memory metric history (controller/metric_history.py): memory per
deployment with a full 24 h of samples, the cost of recording a gateway report and of
answering GetDeploymentMetrics. Prints figures; asserts nothing about speed."""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from controller.metric_history import HistorySettings, MetricHistory
from slipway import latency


def fill(history: MetricHistory, deployments: int, seconds: float, gateways: int, t0: float) -> int:
    """Reports every second from each gateway, and a reconcile reading per deployment."""
    rng = random.Random(1)
    reports = 0
    for second in range(int(seconds)):
        now = t0 + second
        for index in range(deployments):
            deployment_id = f"d{index}"
            for _ in range(gateways):
                counts = latency.empty()
                for _ in range(5):
                    counts[rng.randrange(4, 12)] += 1
                history.record_answers(deployment_id, (5, rng.randrange(2), 0), counts, now)
                reports += 1
            history.record_replicas(deployment_id, 2, 2, rng.random() * 4, now)
    return reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a 2-hour history instead of 25 hours")
    args = parser.parse_args()
    settings = HistorySettings()
    hours = 2 if args.quick else 25
    timed = MetricHistory(settings)
    started = time.perf_counter()
    reports = fill(timed, args.deployments, hours * 3600, args.gateways, 1_700_000_000.0)
    elapsed = time.perf_counter() - started  # the fake reports' making included: an upper bound
    history = MetricHistory(settings)
    tracemalloc.start()
    fill(history, args.deployments, hours * 3600, args.gateways, 1_700_000_000.0)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    now = 1_700_000_000.0 + hours * 3600
    print(f"history: {args.deployments} deployments, {hours} h of reports from {args.gateways} gateways each second")
    print(f"memory: {current / 1024:.0f} KiB in all, {current / args.deployments / 1024:.0f} KiB per deployment")
    print(
        f"record: {elapsed / reports * 1e6:.2f} µs per gateway report (with the reconcile readings and the making of the fake report)"
    )
    for window, step in ((3600, 0), (3600, 60), (86400, 0)):
        started = time.perf_counter()
        for _ in range(20):
            used_step, points = history.points("d0", window, step, now)
        per_call = (time.perf_counter() - started) / 20
        print(f"points: window {window} s, step {used_step:g} s -> {len(points)} points in {per_call * 1e3:.2f} ms")
    worst = current / args.deployments * settings.max_deployments / 1024 / 1024
    print(f"bound: at most {settings.max_deployments} deployments -> about {worst:.0f} MiB at worst")


if __name__ == "__main__":
    main()
