"""The model's methods as Truss's server calls them.

`predict` runs preprocess → predict → postprocess with only predict inside
runtime.predict_concurrency, as in Truss. A generator result is pumped by a background
task into a buffer, so the slot is held while the model generates, not while a slow
client reads; a gap between chunks longer than runtime.streaming_read_timeout ends the
stream (StreamStalled). The OpenAI-compatible methods (chat_completions, completions)
run outside the limit and without pre/postprocess, as Truss's endpoints do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from replica import metrics
from replica.codec import ResultEncodingError
from replica.metrics import METRICS, POSTPROCESS, PREPROCESS
from replica.model_request import Args, CallState, arguments, method_args
from replica.package import PackageConfig
from replica.schema import truss_schema
from replica.threads import ModelThreads
from replica.typed import InputValidationError, input_parser
from slipway import tracing

PREDICT = "predict"
# Truss's OpenAI-compatible model methods, each served on its own route.
ENDPOINT_METHODS = frozenset({"chat_completions", "completions"})
Encoder = Callable[[Any], tuple[bytes, str]]


class ModelError(Exception):
    """The user's model code raised; `cause` is what it raised."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"model raised {type(cause).__name__}: {cause}")
        self.cause = cause


class MethodNotImplemented(LookupError):
    """The request names a model method the model does not define."""


class StreamStalled(Exception):
    """The model produced no chunk within runtime.streaming_read_timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            f"the model's stream produced nothing for {timeout:g}s (runtime.streaming_read_timeout): stream ended"
        )


class Predictor:
    def __init__(self, model: Any, config: PackageConfig, threads: ModelThreads, max_buffered_bytes: int) -> None:
        predict = _optional_method(model, "predict")
        self.websocket = _optional_method(model, "websocket")
        if predict is None and self.websocket is None:
            raise ValueError(f"model class {type(model).__name__} has no predict method (nor websocket)")
        self._preprocess = _optional_method(model, "preprocess")
        self._predict = predict
        self._postprocess = _optional_method(model, "postprocess")
        self._parse_input = input_parser(self._preprocess or predict)
        self._endpoints = {name: m for name in ENDPOINT_METHODS if (m := _optional_method(model, name))}
        self._is_healthy = _optional_method(model, "is_healthy")
        # Which calls need Truss's `request` argument: only those build a CallState.
        chain = [m for m in (self._preprocess, predict, self._postprocess) if m is not None]
        self._wants_request = {name: _wants_request(m) for name, m in self._endpoints.items()}
        self._wants_request[""] = self._wants_request[PREDICT] = any(_wants_request(m) for m in chain)
        self.schema = truss_schema(predict, self._preprocess, self._postprocess)
        self._slots = asyncio.Semaphore(config.predict_concurrency)
        self._threads = threads
        self._read_timeout = config.streaming_read_timeout
        self._max_buffered_bytes = max_buffered_bytes

    @contextlib.asynccontextmanager
    async def run(
        self, model_input: Any, encode_chunk: Encoder, method: str = "", call: CallState | None = None
    ) -> AsyncIterator[Any]:
        """Yields the model's result, or a ChunkStream of encoded chunks if it returned a generator.

        `method` is "" or "predict" for the predict chain, else one of ENDPOINT_METHODS.
        `call` is what a method that asks for Truss's `request` argument is given (see
        wants_request: callers need not build one otherwise).
        Leaving the block early stops the model's generator (its finally blocks run).
        """
        if call is None and self.wants_request(method):
            call = CallState(b"", [])
        try:
            if method in ("", PREDICT):
                result, lease = await self._predict_chain(model_input, call)
            else:
                result, lease = await self._endpoint(method, model_input, call), _Lease(None, self._threads)
            if _is_generator(result):
                result = ChunkStream(result, lease, encode_chunk, self._read_timeout, self._max_buffered_bytes)
        except (MethodNotImplemented, ModelError, InputValidationError):
            raise
        except Exception as exc:
            raise ModelError(exc) from exc
        if not isinstance(result, ChunkStream):
            yield result
            return
        try:
            yield result
        finally:
            await result.aclose()

    def wants_request(self, method: str = "") -> bool:
        """Whether the call of `method` ("" / predict: the predict chain) gives a model method
        Truss's `request` argument."""
        return self._wants_request.get(method, False)

    @property
    def checks_health(self) -> bool:
        return self._is_healthy is not None

    async def is_healthy(self) -> bool:
        """The model's is_healthy() (True if it has none). Raises ModelError if it raised
        (unhealthy too, as in Truss)."""
        method = self._is_healthy
        if method is None:
            return True
        try:
            if inspect.iscoroutinefunction(method):
                return bool(await method())
            result = await self._threads.run(method)
            return bool(await result if inspect.isawaitable(result) else result)
        except Exception as exc:
            raise ModelError(exc) from exc

    async def _predict_chain(self, model_input: Any, call: CallState | None) -> tuple[Any, _Lease]:
        """The result, and the predict slot: still held if the result is a generator."""
        if self._predict is None:
            raise MethodNotImplemented("the model does not implement `predict` (it is a websocket model)")
        if self._parse_input is not None:  # raises InputValidationError: the caller's fault
            model_input = self._parse_input(model_input)
        if self._preprocess is not None:
            with METRICS.phase(PREPROCESS), tracing.span("preprocess"):
                model_input = await _call(_Lease(None, self._threads), self._preprocess, model_input, call)
        with tracing.span("queue wait"):  # for a predict_concurrency slot
            await self._slots.acquire()
        lease = _Lease(self._slots, self._threads)
        try:
            with (
                METRICS.phase(metrics.PREDICT),
                tracing.span("predict"),
            ):  # a generator's body runs later, as it is read
                result = await _call(lease, self._predict, model_input, call)
        except BaseException:
            lease.release()
            raise
        if _is_generator(result):
            if self._postprocess is not None:
                lease.release()
                raise TypeError("postprocess is not supported when predict returns a generator")
            return result, lease
        lease.release()
        if self._postprocess is not None:
            with METRICS.phase(POSTPROCESS), tracing.span("postprocess"):
                result = await _call(_Lease(None, self._threads), self._postprocess, result, call)
        return result, lease

    async def _endpoint(self, method: str, model_input: Any, call: CallState | None) -> Any:
        if method not in ENDPOINT_METHODS:
            raise MethodNotImplemented(f"{method!r} is not a model method that can be called")
        function = self._endpoints.get(method)
        if function is None:
            raise MethodNotImplemented(f"the model does not implement `{method}`")
        with tracing.span(method):
            return await _call(_Lease(None, self._threads), function, model_input, call)


class _Lease:
    """One request's predict_concurrency slot (none for calls outside the limit).

    If the request is cancelled while model code runs in a thread, the slot is
    released only when that code returns: the limit bounds model calls actually
    running, not requests still waiting for them.
    """

    def __init__(self, slots: asyncio.Semaphore | None, threads: ModelThreads) -> None:
        self._slots = slots
        self._threads = threads
        self._abandoned: asyncio.Future[Any] | None = None
        self._released = False

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._threads.submit(fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._abandoned = future
            raise

    def release(self) -> None:
        slots = self._slots
        if slots is None or self._released:
            return
        self._released = True
        if self._abandoned is not None and not self._abandoned.done():
            self._abandoned.add_done_callback(lambda _: slots.release())
        else:
            slots.release()


async def _call(lease: _Lease, method: Callable[..., Any], value: Any, call: CallState | None) -> Any:
    args = arguments(method_args(method), value, call.request if call is not None else _no_request)
    kind = _kind(getattr(method, "__func__", method))
    if kind is _COROUTINE:
        return await method(*args)
    if kind is _GENERATOR:
        return method(*args)  # only creates the generator; its body runs as it is iterated
    result = await lease.run_in_thread(method, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


class ChunkStream:
    """A model's sync or async generator, pumped into a buffer by a background task.

    Iterating yields encoded chunks (bytes, content type). The producer holds the
    predict slot (if any) until the generator is exhausted or fails; the buffer holds at
    most `max_buffered_bytes` (beyond that the producer waits for the reader, a bound Truss
    does not have). A sync generator's steps run in a worker thread.
    """

    def __init__(
        self, generator: Any, lease: _Lease, encode: Encoder, read_timeout: float, max_buffered_bytes: int
    ) -> None:
        self._generator = generator
        self._lease = lease
        self._encode = encode
        self._read_timeout = read_timeout
        self._budget = max_buffered_bytes
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._buffered = 0
        self._drained = asyncio.Event()
        self._failure: Exception | None = None
        self._done = False
        self._producer = asyncio.create_task(self._produce())

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> tuple[bytes, str]:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._queue.get(), self._read_timeout)
        except TimeoutError:
            self._done = True
            self._producer.cancel()
            raise StreamStalled(self._read_timeout) from None
        if item is _END:
            self._done = True
            if self._failure is not None:
                raise self._failure
            raise StopAsyncIteration
        self._buffered -= len(item[0])
        self._drained.set()
        return item

    async def aclose(self) -> None:
        """Stops the generator (running its finally blocks) if the stream ended early."""
        self._done = True
        if not self._producer.done():
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer

    async def _produce(self) -> None:
        try:
            while True:
                chunk = await self._next()
                if chunk is _END:
                    return
                data, content_type = self._encode(chunk)
                self._queue.put_nowait((data, content_type))
                self._buffered += len(data)
                while self._buffered > self._budget:
                    self._drained.clear()
                    await self._drained.wait()
        except Exception as exc:
            self._failure = exc if isinstance(exc, ResultEncodingError) else ModelError(exc)
        finally:
            await self._close_generator()
            self._lease.release()
            self._queue.put_nowait(_END)

    async def _next(self) -> Any:
        if inspect.isasyncgen(self._generator):
            try:
                return await self._generator.__anext__()
            except StopAsyncIteration:
                return _END
        return await self._lease.run_in_thread(next, self._generator, _END)

    async def _close_generator(self) -> None:
        # Cleanup runs while another exception (often a cancellation) may be propagating;
        # an error in the model's cleanup must not replace it.
        with contextlib.suppress(Exception):
            if inspect.isasyncgen(self._generator):
                await self._generator.aclose()
            elif inspect.getgeneratorstate(self._generator) == inspect.GEN_SUSPENDED:
                await self._lease.run_in_thread(self._generator.close)


_END = object()
_COROUTINE, _GENERATOR, _PLAIN = "coroutine", "generator", "plain"


@functools.lru_cache(maxsize=1024)
def _kind(function: Callable[..., Any]) -> str:
    """How a model method is called; asked once per function (bound methods are new objects
    on every access, so the cache is keyed on the function)."""
    if inspect.iscoroutinefunction(function):
        return _COROUTINE
    if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
        return _GENERATOR
    return _PLAIN


def _no_request() -> Any:
    """The request of a call made without a CallState (its caller had none to give)."""
    return CallState(b"", []).request()


def _wants_request(method: Callable[..., Any]) -> bool:
    return method_args(method) in (Args.REQUEST, Args.INPUTS_AND_REQUEST)


def _is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def _optional_method(model: Any, name: str) -> Callable[..., Any] | None:
    method = getattr(model, name, None)
    return method if callable(method) else None
