"""The replica model server, tested as the controller runs it: a real subprocess."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from replica.package import load_package_config, secret_env_var, validate_package
from slipway.internal_auth import REPLICA_TOKEN_ENV, REPLICA_TOKEN_HEADER
from slipway.v1 import replica_service_pb2 as pb
from slipway.v1 import replica_service_pb2_grpc as pb_grpc

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SERVICE = "slipway.v1.ReplicaService"
TIMEOUT = 10.0
TOKEN = "test-replica-token"


class WithToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds the replica's token to every call, as the gateway and controller do."""

    def _with_token(self, details):
        metadata = [*(details.metadata or ()), (REPLICA_TOKEN_HEADER, TOKEN)]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


class ReplicaProcess:
    def __init__(self, package: pathlib.Path, workdir: pathlib.Path, args: list[str], env: dict[str, str]) -> None:
        self.state_file = workdir / "state.json"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "replica",
                "--package",
                str(package),
                "--state-file",
                str(self.state_file),
                "--replica-id",
                "r-test",
                *args,
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), REPLICA_TOKEN_ENV: TOKEN, **env},
            stderr=subprocess.PIPE,
            text=True,
        )
        self._channel: grpc.Channel | None = None

    def state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None

    def wait_for_phase(self, *phases: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            state = self.state()
            if state is not None and state["phase"] in phases:
                return state
            if self.process.poll() is not None and (state is None or state["phase"] not in phases):
                raise AssertionError(f"replica exited with {self.process.returncode}, state {state}: {self.logs()}")
            time.sleep(0.01)
        raise AssertionError(f"replica never reached {phases}; last state {self.state()}")

    def wait_ready(self) -> ReplicaProcess:
        state = self.wait_for_phase("ready")
        assert state["port"] > 0
        return self

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            plain = grpc.insecure_channel(f"127.0.0.1:{self.state()['port']}")
            self._channel = grpc.intercept_channel(plain, WithToken())
        return self._channel

    @property
    def stub(self) -> pb_grpc.ReplicaServiceStub:
        return pb_grpc.ReplicaServiceStub(self.channel)

    def health(self, service: str = SERVICE) -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(self.channel).Check(request, timeout=TIMEOUT).status

    def predict(self, value, content_type: str = "application/json") -> pb.InvokeResponse:
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        return self.stub.Invoke(pb.InvokeRequest(payload=payload, content_type=content_type), timeout=TIMEOUT)

    def predict_json(self, value):
        response = self.predict(value)
        assert response.content_type == "application/json"
        return json.loads(response.payload)

    def stream(self, value) -> list[pb.InvokeStreamResponse]:
        request = pb.InvokeStreamRequest(payload=json.dumps(value).encode(), content_type="application/json")
        return list(self.stub.InvokeStream(request, timeout=TIMEOUT))

    def assert_exits_with(self, expected: int) -> None:
        code = self.process.wait(timeout=TIMEOUT)
        assert code == expected, f"exit code {code}, expected {expected}: {self.logs()}"

    def logs(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()


@pytest.fixture
def start(tmp_path):
    started: list[ReplicaProcess] = []

    def start(package: pathlib.Path, *args: str, env: dict[str, str] | None = None) -> ReplicaProcess:
        workdir = tmp_path / f"replica-{len(started)}"
        workdir.mkdir()
        replica = ReplicaProcess(package, workdir, list(args), env or {})
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.close()


@pytest.fixture
def make_package(tmp_path):
    def make_package(
        model_source: str, config: dict | None = None, files: dict[str, str] | None = None
    ) -> pathlib.Path:
        package = tmp_path / f"package-{len(list(tmp_path.glob('package-*')))}"
        (package / "model").mkdir(parents=True)
        (package / "config.yaml").write_text(yaml.safe_dump({"model_name": "test", **(config or {})}))
        (package / "model" / "model.py").write_text(textwrap.dedent(model_source))
        for name, source in (files or {}).items():
            path = package / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        return package

    return make_package


def wait_for_file(path: pathlib.Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


# Model code that blocks until the test creates a file, so the test decides when it proceeds.
WAIT_FOR_FILE = """
import pathlib, time

def wait_for(path):
    path = pathlib.Path(path)
    while not path.exists():
        time.sleep(0.01)
"""


# --- serving ---------------------------------------------------------------------------


def test_echo_example_reports_state_then_serves(start):
    replica = start(EXAMPLES / "echo").wait_ready()

    state = replica.state()
    assert state == {
        "pid": replica.process.pid,
        "port": state["port"],
        "http_port": state["http_port"],
        "replica_id": "r-test",
        "phase": "ready",
    }
    assert state["http_port"] > 0 and state["http_port"] != state["port"]
    assert replica.health(SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert replica.health("") == health_pb2.HealthCheckResponse.SERVING
    assert replica.predict_json({"text": "hi"}) == {"echo": {"text": "hi"}}
    # An empty content type means JSON.
    assert json.loads(replica.predict([1, 2], content_type="").payload) == {"echo": [1, 2]}


def test_not_serving_and_unavailable_until_load_returns(start, make_package, tmp_path):
    release = tmp_path / "release-load"
    package = make_package(
        WAIT_FOR_FILE
        + f"""
class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        wait_for({str(release)!r})

    def predict(self, model_input):
        return "loaded"
"""
    )
    replica = start(package)

    state = replica.wait_for_phase("loading")
    assert state["port"] > 0 and state["pid"] == replica.process.pid
    assert replica.health() == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as error:
        replica.predict({})
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE

    release.touch()
    replica.wait_ready()
    assert replica.health() == health_pb2.HealthCheckResponse.SERVING
    assert replica.predict_json({}) == "loaded"


def test_load_failure_is_reported_and_exits_3(start, make_package):
    package = make_package(
        """
        class Model:
            def __init__(self, **kwargs):
                pass

            def load(self):
                raise RuntimeError("weights are missing")

            def predict(self, model_input):
                return model_input
        """
    )
    replica = start(package)

    state = replica.wait_for_phase("failed")
    assert state["error"] == "RuntimeError: weights are missing"
    assert "in load" in state["traceback"] and "weights are missing" in state["traceback"]
    replica.assert_exits_with(3)


def test_import_error_is_reported_and_exits_3(start, make_package):
    replica = start(make_package("import not_a_module_anywhere\n"))

    state = replica.wait_for_phase("failed")
    assert state["error"].startswith("ModuleNotFoundError: No module named 'not_a_module_anywhere'")
    replica.assert_exits_with(3)


def test_invalid_json_is_invalid_argument(start):
    replica = start(EXAMPLES / "echo").wait_ready()

    with pytest.raises(grpc.RpcError) as error:
        replica.predict(b'{"unterminated', content_type="application/json")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("request body is not valid JSON: ")


def test_model_exception_is_internal(start, make_package):
    package = make_package(
        """
        class Model:
            def predict(self, model_input):
                raise ValueError(f"cannot handle {model_input}")
        """
    )
    replica = start(package).wait_ready()

    with pytest.raises(grpc.RpcError) as error:
        replica.predict(7)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert error.value.details() == "model raised ValueError: cannot handle 7"
    assert replica.health() == health_pb2.HealthCheckResponse.SERVING


def test_bytes_pass_through_raw(start, make_package):
    package = make_package(
        """
        class Model:
            def predict(self, model_input):
                assert isinstance(model_input, bytes)
                return model_input[::-1]
        """
    )
    replica = start(package).wait_ready()

    response = replica.predict(b"\x00\x01\xff", content_type="application/octet-stream")
    assert response.payload == b"\xff\x01\x00"
    assert response.content_type == "application/octet-stream"


# --- streaming ---------------------------------------------------------------------------


def test_stream_example_yields_one_message_per_chunk(start):
    replica = start(EXAMPLES / "stream").wait_ready()

    messages = replica.stream({"text": "one two three"})
    assert [m.chunk for m in messages] == [b"one\n", b"two\n", b"three\n"]
    assert {m.content_type for m in messages} == {"text/plain; charset=utf-8"}
    # A unary call on a streaming model gets every chunk, concatenated.
    response = replica.predict({"text": "one two"})
    assert (response.payload, response.content_type) == (b"one\ntwo\n", "text/plain; charset=utf-8")


def test_async_generator_streams_json_chunks(start, make_package):
    package = make_package(
        """
        import asyncio

        class Model:
            async def predict(self, model_input):
                for i in range(model_input["n"]):
                    await asyncio.sleep(0)
                    yield {"i": i}
        """
    )
    replica = start(package).wait_ready()

    messages = replica.stream({"n": 3})
    assert [json.loads(m.chunk) for m in messages] == [{"i": 0}, {"i": 1}, {"i": 2}]
    # Each chunk is one line of a stream of JSON values.
    assert all(m.chunk.endswith(b"\n") and m.content_type == "application/x-ndjson" for m in messages)


def test_stream_of_a_plain_result_is_one_json_message(start):
    replica = start(EXAMPLES / "echo").wait_ready()

    messages = replica.stream({"a": 1})
    assert [(json.loads(m.chunk), m.content_type) for m in messages] == [({"echo": {"a": 1}}, "application/json")]


def test_error_mid_stream_is_internal_after_earlier_chunks(start, make_package):
    package = make_package(
        """
        class Model:
            def predict(self, model_input):
                yield "first"
                raise KeyError("second")
        """
    )
    replica = start(package).wait_ready()

    request = pb.InvokeStreamRequest(payload=b"{}", content_type="application/json")
    received = []
    with pytest.raises(grpc.RpcError) as error:
        for message in replica.stub.InvokeStream(request, timeout=TIMEOUT):
            received.append(message.chunk)
    assert received == [b"first"]
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert error.value.details() == "model raised KeyError: 'second'"


# --- the model class ----------------------------------------------------------------------


def test_async_predict(start, make_package):
    package = make_package(
        """
        import asyncio

        class Model:
            def __init__(self, **kwargs):
                self._factor = None

            async def load(self):
                await asyncio.sleep(0)
                self._factor = 10

            async def predict(self, model_input):
                await asyncio.sleep(0)
                return model_input * self._factor
        """
    )
    replica = start(package).wait_ready()

    assert replica.predict_json(4) == 40


def test_preprocess_predict_postprocess_chain(start, make_package):
    package = make_package(
        """
        class Model:
            def preprocess(self, model_input):
                return model_input + ["preprocess"]

            async def predict(self, model_input):
                return model_input + ["predict"]

            async def postprocess(self, model_output):
                return model_output + ["postprocess"]
        """
    )
    replica = start(package).wait_ready()

    assert replica.predict_json(["input"]) == ["input", "preprocess", "predict", "postprocess"]


def test_constructor_gets_only_the_kwargs_it_accepts(start, make_package):
    package = make_package(
        """
        import os

        # Read at import time: environment_variables must be set before the import.
        IMPORT_TIME_GREETING = os.environ.get("GREETING")

        class Model:
            def __init__(self, config, data_dir, secrets, environment):
                self._seen = {
                    "model_name": config["model_name"],
                    "data_file": (data_dir / "weights.txt").read_text(),
                    "data_dir_absolute": data_dir.is_absolute(),
                    "secret": secrets["hf_access-token"],
                    "environment": environment,
                    "import_time_greeting": IMPORT_TIME_GREETING,
                    "retries": os.environ.get("RETRIES"),
                    "debug": os.environ.get("DEBUG"),
                }

            def predict(self, model_input):
                return self._seen
        """,
        config={
            "environment_variables": {"GREETING": "hello", "RETRIES": 3, "DEBUG": True},
            "secrets": {"hf_access-token": None, "unset_secret": None},
        },
        files={"data/weights.txt": "42"},
    )
    replica = start(
        package,
        env={secret_env_var("hf_access-token"): "s3cret", "SLIPWAY_ENVIRONMENT": "production"},
    ).wait_ready()

    assert replica.predict_json(None) == {
        "model_name": "test",
        "data_file": "42",
        "data_dir_absolute": True,
        "secret": "s3cret",
        "environment": {"name": "production"},
        "import_time_greeting": "hello",
        "retries": "3",
        "debug": "true",
    }


def test_model_imports_sibling_modules_and_custom_layout(start, make_package):
    package = make_package(
        """
        raise AssertionError("the default model file must not be used")
        """,
        config={
            "model_module_dir": "src",
            "model_class_filename": "server.py",
            "model_class_name": "Server",
            "external_package_dirs": ["shared"],
        },
        files={
            "src/server.py": """
                from helpers import double
                from .relative import triple
                from shared_lib import add_one

                class Server:
                    def predict(self, model_input):
                        return add_one(triple(double(model_input)))
            """,
            "src/helpers.py": "def double(x):\n    return 2 * x\n",
            "src/relative.py": "def triple(x):\n    return 3 * x\n",
            "shared/shared_lib.py": "def add_one(x):\n    return x + 1\n",
        },
    )
    replica = start(package).wait_ready()

    assert replica.predict_json(1) == 7


# --- concurrency and shutdown ---------------------------------------------------------------

COUNTING_MODEL = """
import threading, time

class Model:
    def __init__(self, **kwargs):
        self._lock = threading.Lock()
        self._running = 0
        self._max_running = 0

    def predict(self, model_input):
        with self._lock:
            self._running += 1
            self._max_running = max(self._max_running, self._running)
        try:
            time.sleep(model_input["sleep"])
        finally:
            with self._lock:
                self._running -= 1
        return self._max_running
"""


def test_predict_concurrency_1_serialises_calls(start, make_package):
    package = make_package(COUNTING_MODEL, config={"runtime": {"predict_concurrency": 1}})
    replica = start(package).wait_ready()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: replica.predict_json({"sleep": 0.05}), range(6)))
    assert max(results) == 1


def test_predict_concurrency_allows_parallel_calls(start, make_package):
    # All four calls must be inside predict at once to pass the barrier; with a limit
    # below four they would time out instead.
    package = make_package(
        """
        import threading

        BARRIER = threading.Barrier(4, timeout=5)

        class Model:
            def predict(self, model_input):
                BARRIER.wait()
                return "together"
        """,
        config={"runtime": {"predict_concurrency": 4}},
    )
    replica = start(package).wait_ready()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: replica.predict_json({}), range(4))) == ["together"] * 4


def test_cancelled_call_keeps_its_slot_until_the_model_returns(start, make_package):
    package = make_package(COUNTING_MODEL, config={"runtime": {"predict_concurrency": 1}})
    replica = start(package).wait_ready()

    # The client gives up on the first call long before its predict() returns; the
    # second call must still wait for that predict() to finish.
    first = pb.InvokeRequest(payload=json.dumps({"sleep": 0.6}).encode())
    with pytest.raises(grpc.RpcError) as error:
        replica.stub.Invoke(first, timeout=0.1)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert replica.predict_json({"sleep": 0}) == 1


def test_sigterm_drains_in_flight_request_then_exits_0(start, make_package, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    package = make_package(
        WAIT_FOR_FILE
        + f"""
class Model:
    def predict(self, model_input):
        pathlib.Path({str(started)!r}).touch()
        wait_for({str(release)!r})
        return "finished"
"""
    )
    # A long drain period: the process must exit as soon as the request is done,
    # even with a health Watch stream open. No late-arrival grace: new calls are refused at once.
    replica = start(package, "--drain-seconds", "60", "--late-arrival-seconds", "0").wait_ready()
    watch = health_pb2_grpc.HealthStub(replica.channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(replica.predict_json, {})
        wait_for_file(started)
        replica.process.send_signal(signal.SIGTERM)

        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            replica.predict({})
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == "replica is shutting down"
        assert not in_flight.done()

        release.touch()
        assert in_flight.result(timeout=TIMEOUT) == "finished"
    replica.assert_exits_with(0)
    logs = replica.logs()
    events = [json.loads(line)["event"] for line in logs.splitlines()]
    assert events[-3:] == ["signal_received", "draining", "stopped"]


def test_a_call_arriving_just_after_sigterm_is_served_not_refused(start):
    """Gateways stop routing to a replica before it is told to drain, but a call one of them
    dispatched just before can land after the signal: it is served within the grace."""
    replica = start(EXAMPLES / "echo", "--late-arrival-seconds", "60").wait_ready()
    watch = health_pb2_grpc.HealthStub(replica.channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    replica.process.send_signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # draining
    assert replica.predict_json({"text": "late"}) == {"echo": {"text": "late"}}


def test_drain_gives_up_after_drain_seconds(start, make_package, tmp_path):
    started = tmp_path / "started"
    package = make_package(
        WAIT_FOR_FILE
        + f"""
class Model:
    def predict(self, model_input):
        pathlib.Path({str(started)!r}).touch()
        wait_for("/nonexistent/never")
"""
    )
    replica = start(package, "--drain-seconds", "0.2").wait_ready()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(replica.predict, {})
        wait_for_file(started)
        replica.process.send_signal(signal.SIGTERM)
        replica.assert_exits_with(0)
        with pytest.raises(grpc.RpcError):
            stuck.result(timeout=TIMEOUT)


def test_sigterm_while_loading_exits_0(start, make_package):
    package = make_package(
        WAIT_FOR_FILE
        + """
class Model:
    def load(self):
        wait_for("/nonexistent/never")

    def predict(self, model_input):
        return model_input
"""
    )
    replica = start(package)
    replica.wait_for_phase("loading")

    replica.process.send_signal(signal.SIGTERM)
    replica.assert_exits_with(0)


def test_port_in_use_is_reported_and_exits_3(start):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        replica = start(EXAMPLES / "echo", "--port", str(taken.getsockname()[1]))

        state = replica.wait_for_phase("failed")
        assert state["port"] is None
        assert state["error"].startswith("RuntimeError: Failed to bind to address 127.0.0.1:")
        replica.assert_exits_with(3)


# --- package config (in process) --------------------------------------------------------------


def write(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_config_defaults(tmp_path):
    write(tmp_path / "config.yaml", "model_name: tiny\n")
    write(tmp_path / "model" / "model.py", "class Model:\n    pass\n")

    config = validate_package(tmp_path)

    assert config.model_name == "tiny"
    assert config.predict_concurrency == 1
    assert config.model_file == tmp_path.resolve() / "model" / "model.py"
    assert config.model_class_name == "Model"
    assert config.data_dir == tmp_path.resolve() / "data"
    assert config.secret_names == () and dict(config.environment_variables) == {}
    assert config.raw_dict() == {"model_name": "tiny"}


def test_truss_scaffold_config_is_accepted(tmp_path):
    # What `truss init` writes, including keys the replica does not use.
    write(
        tmp_path / "config.yaml",
        """
        build_commands: []
        environment_variables: {}
        external_package_dirs: []
        model_metadata: {}
        model_name: My Model
        python_version: py311
        requirements: [numpy==2.1.0]
        resources: {accelerator: null, cpu: '1', memory: 2Gi, use_gpu: false}
        secrets: {hf_access_token: null}
        system_packages: []
        """,
    )
    write(tmp_path / "model" / "__init__.py", "")
    write(tmp_path / "model" / "model.py", "class Model:\n    def __init__(self, **kwargs):\n        pass\n")

    config = validate_package(tmp_path)

    assert config.model_name == "My Model"
    assert config.secret_names == ("hf_access_token",)
    assert config.requirements == ("numpy==2.1.0",)


def test_config_yaml_missing(tmp_path):
    with pytest.raises(ValueError, match="config.yaml is missing"):
        load_package_config(tmp_path)


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("- a\n- b\n", "config.yaml must be a mapping, got list"),
        ("model_name: [unclosed\n", "config.yaml is not valid YAML"),
        ("runtime: {predict_concurrency: 0}\n", "runtime.predict_concurrency must be an integer >= 1, got 0"),
        ("runtime: {predict_concurrency: many}\n", "runtime.predict_concurrency must be an integer >= 1"),
        ("runtime: 4\n", "runtime must be a mapping, got int"),
        ("environment_variables: [A, B]\n", "environment_variables must be a mapping, got list"),
        ("model_module_dir: ../elsewhere\n", "model_module_dir must be a path inside the package"),
        ("model_class_filename: model.txt\n", "model_class_filename must name a .py file"),
        ("model_class_name: not-a-name\n", "model_class_name must be a Python identifier"),
        ("external_package_dirs: lib\n", "external_package_dirs must be a list of strings"),
    ],
)
def test_malformed_config_is_a_clear_value_error(tmp_path, config_text, message):
    write(tmp_path / "config.yaml", config_text)
    with pytest.raises(ValueError) as error:
        load_package_config(tmp_path)
    assert message in str(error.value)


def test_validate_package_requires_model_file(tmp_path):
    write(tmp_path / "config.yaml", "model_name: m\n")
    with pytest.raises(ValueError, match=r"model file model/model.py is missing"):
        validate_package(tmp_path)


def test_validate_package_requires_class_without_importing(tmp_path):
    write(tmp_path / "config.yaml", "model_name: m\n")
    write(tmp_path / "model" / "model.py", "raise SystemExit('imported!')\nclass Other:\n    pass\n")
    with pytest.raises(ValueError, match="does not define class Model"):
        validate_package(tmp_path)


def test_validate_package_reports_syntax_errors(tmp_path):
    write(tmp_path / "config.yaml", "model_name: m\n")
    write(tmp_path / "model" / "model.py", "class Model(:\n")
    with pytest.raises(ValueError, match="syntax error at line 1"):
        validate_package(tmp_path)


def test_examples_are_valid_packages():
    assert validate_package(EXAMPLES / "echo").predict_concurrency == 8
    assert validate_package(EXAMPLES / "stream").model_name == "stream"


def test_secret_env_var_name():
    assert secret_env_var("hf_access-token") == "SLIPWAY_SECRET_HF_ACCESS_TOKEN"
