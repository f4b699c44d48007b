"""The `request` argument Truss hands to model methods that declare one.

Truss passes a starlette Request to a method whose parameter is annotated with it
(`def predict(self, model_input, request: fastapi.Request)`, or `request` alone), and
a model watches for the client going away with `await request.is_disconnected()` or,
from synchronous code, `with request.state.watch_disconnect() as disconnected:` (a
threading.Event). Here the request is built from the gRPC call: it reports
disconnected once the call is over (the client cancelled it: the gateway cancels it
when the HTTP client disconnects).

starlette is looked up in sys.modules: only a model that imported it can annotate with
its Request, and the replica's own start stays free of it.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from typing import Any

REQUEST_PATH = "/v1/models/model:predict"


class Args(enum.Enum):
    """What a model method takes, as Truss's ArgConfig tells it from the signature."""

    NONE = enum.auto()
    INPUTS = enum.auto()
    REQUEST = enum.auto()
    INPUTS_AND_REQUEST = enum.auto()


def method_args(method: Callable[..., Any]) -> Args:
    """INPUTS for any method that does not ask for the request (Truss refuses a few shapes
    this accepts: a second parameter not annotated as a Request, more than two)."""
    # Bound methods are new objects on every access: cache on the function.
    return _args_of_function(getattr(method, "__func__", method), inspect.ismethod(method))


@functools.lru_cache(maxsize=1024)
def _args_of_function(function: Callable[..., Any], bound: bool) -> Args:
    try:
        parameters = list(inspect.signature(function).parameters.values())[1 if bound else 0 :]
    except (TypeError, ValueError):
        return Args.INPUTS
    if not parameters:
        return Args.NONE
    wants = [_is_request_type(function, p) for p in parameters[:2]]
    if len(parameters) == 1:
        return Args.REQUEST if wants[0] else Args.INPUTS
    return Args.INPUTS_AND_REQUEST if wants[1] else Args.INPUTS


def arguments(args: Args, inputs: Any, request: Callable[[], Any]) -> tuple[Any, ...]:
    if args is Args.NONE:
        return ()
    if args is Args.REQUEST:
        return (request(),)
    if args is Args.INPUTS_AND_REQUEST:
        return (inputs, request())
    return (inputs,)


def _is_request_type(method: Callable[..., Any], parameter: inspect.Parameter) -> bool:
    requests = sys.modules.get("starlette.requests")
    if requests is None:
        return False
    annotation = parameter.annotation
    if isinstance(annotation, str):  # `from __future__ import annotations`
        try:
            annotation = typing.get_type_hints(method).get(parameter.name)
        except Exception:  # an annotation naming something the module never imported
            return False
    return isinstance(annotation, type) and issubclass(annotation, requests.Request)


class CallState:
    """One call's view of its client: the headers it sent and whether it is gone."""

    def __init__(self, payload: bytes, headers: list[tuple[str, str]]) -> None:
        self.payload = payload
        self.headers = headers
        self.disconnected = threading.Event()
        self._request: Any = None

    def request(self) -> Any:
        """The starlette Request for this call (one per call, made when a method asks)."""
        if self._request is None:
            self._request = _starlette_request(self)
        return self._request


def _starlette_request(call: CallState) -> Any:
    from starlette.requests import Request

    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if call.disconnected.is_set():
            return {"type": "http.disconnect"}
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": call.payload, "more_body": False}
        return {}  # nothing new: is_disconnected() reads this as still connected

    scope: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": REQUEST_PATH,
        "raw_path": REQUEST_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in call.headers],
        "client": None,
        "server": None,
        "state": {},
    }
    request = Request(scope, receive)

    @contextlib.contextmanager
    def watch_disconnect() -> Iterator[threading.Event]:
        yield call.disconnected

    request.state.watch_disconnect = watch_disconnect
    return request
