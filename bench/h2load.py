"""The load generator of the data-plane benchmarks: h2load (C, one thread, not Python),
its output parsed, and the CPU time processes spent around a measured run (/proc)."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import resource
import struct
import subprocess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(line: str = "") -> None:
    print(line, flush=True)


def cpu_seconds(pid: int, thread: bool = False) -> float:
    """utime + stime of a process (all its threads), or with `thread` of its main thread
    only (the one running the asyncio event loop), in seconds."""
    stat = pathlib.Path(f"/proc/{pid}/task/{pid}/stat" if thread else f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_of(pids: int | list[int], thread: bool = False) -> float:
    """cpu_seconds summed over processes (the workers of `slipway gateway --workers N`)."""
    return sum(cpu_seconds(pid, thread) for pid in ([pids] if isinstance(pids, int) else pids))


def system_cpu_seconds() -> dict[str, float]:
    """Machine-wide CPU time (all cores) from the first line of /proc/stat: busy in
    processes (user+nice+system), in interrupts (irq+softirq: loopback networking runs
    there and is charged to no process), and stolen by the hypervisor."""
    fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
    return {
        "process": (user + nice + system) / CLOCK_TICKS,
        "irq": (irq + softirq) / CLOCK_TICKS,
        "steal": steal / CLOCK_TICKS,
    }


@dataclasses.dataclass
class Run:
    path: str
    concurrency: int
    requests: int
    seconds: float = 0.0
    req_per_s: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    succeeded: int = 0
    failed: int = 0  # h2load failed + errored + timeout, plus non-2xx statuses in the log
    non_2xx: int = 0
    data_bytes: int = 0
    expected_bytes: int = 0  # requests x the size of one good response body
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)  # process -> CPU seconds
    chunks: int = 1  # responses per request (a stream's chunks)

    @property
    def bad_bodies(self) -> int:
        """Responses missing from the DATA bytes: a gRPC error is HTTP 200 with no message."""
        if not self.expected_bytes or self.data_bytes >= self.expected_bytes:
            return 0
        per = self.expected_bytes / self.requests
        return math.ceil((self.expected_bytes - self.data_bytes) / per)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def h2load(
    url: str,
    body: pathlib.Path,
    headers: list[str],
    requests: int,
    concurrency: int,
    log_file: pathlib.Path | None,
    h1: bool,
) -> str:
    command = ["h2load", "-n", str(requests), "-c", str(concurrency), "-m", "1", "-t", "1", "-d", str(body), *headers]
    if h1:
        command.append("--h1")
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    command.append(url)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"h2load failed ({result.returncode}): {' '.join(command)}\n{result.stdout}{result.stderr}")
    return result.stdout


def parse_summary(output: str, run: Run) -> None:
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", output)
    counts = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", output)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    traffic = re.search(r"\((\d+)\) data", output)
    if not (finished and counts and statuses and traffic):
        raise RuntimeError(f"cannot parse h2load output:\n{output}")
    run.seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    run.req_per_s = float(finished[3])
    run.succeeded = int(counts[1])
    run.failed = int(counts[2]) + int(counts[3]) + int(counts[4])
    run.non_2xx = int(statuses[2]) + int(statuses[3]) + int(statuses[4])
    run.data_bytes = int(traffic[1])


def parse_log(log_file: pathlib.Path, run: Run) -> None:
    """h2load --log-file lines: start (us since epoch), status, duration (us)."""
    durations: list[float] = []
    non_2xx = 0
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        status, duration_us = int(parts[1]), int(parts[2])
        if not 200 <= status < 300:
            non_2xx += 1
        durations.append(duration_us / 1000)
    durations.sort()
    run.p50_ms = percentile(durations, 50)
    run.p99_ms = percentile(durations, 99)
    run.non_2xx = max(run.non_2xx, non_2xx)
    logged = len(durations)
    if logged < run.requests:  # requests that never completed are not in the log
        run.failed = max(run.failed, run.requests - logged)


@dataclasses.dataclass
class Target:
    name: str
    url: str
    body: pathlib.Path
    headers: list[str]
    h1: bool
    response_bytes: int  # one good response body as h2load counts DATA (gRPC frame or JSON body)
    # The processes whose CPU is the gateway's (its workers, with --gateway-workers; on the
    # native data plane HAProxy's processes and the Python gateway's together).
    gateway_pids: tuple[int, ...] = ()
    # Parts of the gateway's CPU shown on their own (native: "haproxy", "python gateway").
    gateway_parts: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # Responses per request that a run counts (a stream's chunks), for rates per chunk.
    chunks: int = 1


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def measure(
    target: Target, concurrency: int, requests: int, warmup: int, pids: dict[str, list[int]], work: pathlib.Path
) -> Run:
    if target.gateway_pids:
        pids = {**pids, "gateway": list(target.gateway_pids)}
    parts = {name: list(part) for name, part in target.gateway_parts.items()}
    h2load(target.url, target.body, target.headers, warmup, concurrency, None, target.h1)
    run = Run(target.name, concurrency, requests, expected_bytes=requests * target.response_bytes)
    run.chunks = target.chunks
    log_file = work / f"h2load-{len(list(work.glob('h2load-*')))}.log"
    before = {name: cpu_of(pid) for name, pid in pids.items()}
    parts_before = {name: cpu_of(part) for name, part in parts.items()}
    loops = {name: cpu_of(pids[name], thread=True) for name in ("gateway", "replica")}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    system = system_cpu_seconds()
    output = h2load(target.url, target.body, target.headers, requests, concurrency, log_file, target.h1)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu = {name: cpu_of(pid) - before[name] for name, pid in pids.items()}
    loop_cpu = {f"{name} loop": cpu_of(pids[name], thread=True) - loops[name] for name in loops}
    run.cpu["h2load"] = (after_children.ru_utime + after_children.ru_stime) - (children.ru_utime + children.ru_stime)
    system_after = system_cpu_seconds()
    run.cpu["other"] = max(0.0, system_after["process"] - system["process"] - sum(run.cpu.values()))
    run.cpu.update({name: cpu_of(part) - parts_before[name] for name, part in parts.items()})
    run.cpu["irq"] = system_after["irq"] - system["irq"]
    run.cpu["steal"] = system_after["steal"] - system["steal"]
    run.cpu.update(loop_cpu)
    parse_summary(output, run)
    parse_log(log_file, run)
    bad = run.failed + run.non_2xx + run.bad_bodies
    say(
        f"  {target.name:<40} c={concurrency:<3} n={requests:<6} {run.req_per_s:8.1f} req/s  "
        f"p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  bad {bad}"
    )
    return run


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"
