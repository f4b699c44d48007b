"""The README's run command, end to end: `slipway up --example examples/echo` as a real
process, called over HTTP and through the CLI, then stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from test_restart import free_port, replica_pids

ROOT = pathlib.Path(__file__).resolve().parent.parent


def slipway(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slipway", *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def test_up_runs_the_platform_with_the_example_deployed(tmp_path):
    ports = [free_port() for _ in range(3)]
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slipway",
            "up",
            "--example",
            str(ROOT / "examples" / "echo"),
            "--data-dir",
            str(data_dir),
            "--port",
            str(ports[0]),
            "--gateway-port",
            str(ports[1]),
            "--http-port",
            str(ports[2]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Serving"):
                break
        output = "".join(lines)
        assert "Deployment development is ACTIVE." in output, output
        curl = next(line for line in lines if "curl -X POST" in line)
        # The printed example as a shell runs it: the header's key is read from the data dir.
        answer = subprocess.run(["sh", "-c", curl.split("Or over HTTP:", 1)[1]], capture_output=True, timeout=10)
        assert json.loads(answer.stdout) == {"echo": {"text": "hi"}}, answer
        url = curl.split("curl -X POST ")[1].split(" ")[0]
        anonymous = urllib.request.Request(url, data=b'{"text": "hi"}', headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused_anonymous:
            urllib.request.urlopen(anonymous, timeout=10)
        assert refused_anonymous.value.code == 401
        assert (data_dir / "admin.key").stat().st_mode & 0o777 == 0o600
        # The one-click dashboard link signs the local admin in (the key rides in the fragment,
        # which the browser keeps to itself); the page and its gateway address are served.
        link = next(line for line in lines if line.startswith("Dashboard: ")).split()[1]
        page_url, _, fragment = link.partition("#")
        assert fragment == f"key={(data_dir / 'admin.key').read_text().strip()}"
        with urllib.request.urlopen(page_url, timeout=10) as page:
            assert b'<main id="app">' in page.read()
        with urllib.request.urlopen(f"{page_url}dashboard.json", timeout=10) as config:
            assert json.load(config) == {"gatewayHttpUrl": url.split("/model/")[0]}

        env_args = ["--controller", f"127.0.0.1:{ports[0]}", "--gateway", f"127.0.0.1:{ports[1]}"]
        # The CLI finds the admin key of the data dir by itself.
        key_env = {**os.environ, "SLIPWAY_DATA_DIR": str(data_dir)}
        called = slipway(*env_args, "predict", "echo", "--deployment", "development", '{"n": 1}', env=key_env)
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout) == {"echo": {"n": 1}}
        listed = slipway(*env_args, "deployments", "list", "--output", "json", env=key_env)
        assert [d["name"] for d in json.loads(listed.stdout)] == ["development"]
        refused = slipway(*env_args, "predict", "echo", "{}", env=key_env)
        assert refused.returncode == 1 and "NO_PRODUCTION_DEPLOYMENT" in refused.stderr

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert replica_pids(data_dir, include_fork_servers=True) == set()
    finally:
        process.kill()
