"""The predict chain: preprocess → predict → postprocess, within predict_concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from replica.threads import ModelThreads
from replica.typed import input_parser


class ModelError(Exception):
    """The user's model code raised; `cause` is what it raised."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"model raised {type(cause).__name__}: {cause}")
        self.cause = cause


class Predictor:
    def __init__(self, model: Any, predict_concurrency: int, threads: ModelThreads) -> None:
        predict = getattr(model, "predict", None)
        if not callable(predict):
            raise ValueError(f"model class {type(model).__name__} has no predict method")
        self._preprocess = _optional_method(model, "preprocess")
        self._predict = predict
        self._postprocess = _optional_method(model, "postprocess")
        self._parse_input = input_parser(self._preprocess or predict)
        self._slots = asyncio.Semaphore(predict_concurrency)
        self._threads = threads

    @contextlib.asynccontextmanager
    async def run(self, model_input: Any) -> AsyncIterator[Any]:
        """Yields the model's result, or a ChunkStream if predict returned a generator.

        The concurrency slot is held until the block exits, so a streamed response
        counts against predict_concurrency until its last chunk is sent.
        """
        await self._slots.acquire()
        lease = _Lease(self._slots, self._threads)
        try:
            result = await self._chain(lease, model_input)
            if not _is_generator(result):
                yield result
                return
            stream = ChunkStream(result, lease)
            try:
                yield stream
            finally:
                await stream.aclose()
        finally:
            lease.release()

    async def _chain(self, lease: _Lease, model_input: Any) -> Any:
        if self._parse_input is not None:  # raises InputValidationError: the caller's fault
            model_input = self._parse_input(model_input)
        try:
            if self._preprocess is not None:
                model_input = await _call(lease, self._preprocess, model_input)
            result = await _call(lease, self._predict, model_input)
            if self._postprocess is not None:
                if _is_generator(result):
                    raise TypeError("postprocess is not supported when predict returns a generator")
                result = await _call(lease, self._postprocess, result)
            return result
        except Exception as exc:
            raise ModelError(exc) from exc


class _Lease:
    """One request's predict_concurrency slot.

    If the request is cancelled while model code runs in a thread, the slot is
    released only when that code returns: the limit bounds model calls actually
    running, not requests still waiting for them.
    """

    def __init__(self, slots: asyncio.Semaphore, threads: ModelThreads) -> None:
        self._slots = slots
        self._threads = threads
        self._abandoned: asyncio.Future[Any] | None = None

    async def run_in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._threads.submit(fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._abandoned = future
            raise

    def release(self) -> None:
        if self._abandoned is not None and not self._abandoned.done():
            self._abandoned.add_done_callback(lambda _: self._slots.release())
        else:
            self._slots.release()


async def _call(lease: _Lease, method: Callable[[Any], Any], value: Any) -> Any:
    if inspect.iscoroutinefunction(method):
        return await method(value)
    if inspect.isasyncgenfunction(method) or inspect.isgeneratorfunction(method):
        return method(value)  # only creates the generator; its body runs as it is iterated
    result = await lease.run_in_thread(method, value)
    if inspect.isawaitable(result):
        result = await result
    return result


class ChunkStream:
    """Iterates a model's sync or async generator from the event loop.

    A sync generator's steps run in a worker thread so a slow model does not block the loop.
    """

    def __init__(self, generator: Any, lease: _Lease) -> None:
        self._generator = generator
        self._lease = lease
        self._done = False

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            if inspect.isasyncgen(self._generator):
                return await self._generator.__anext__()
            chunk = await self._lease.run_in_thread(next, self._generator, _END)
        except StopAsyncIteration:
            self._done = True
            raise
        except Exception as exc:
            self._done = True
            raise ModelError(exc) from exc
        if chunk is _END:
            self._done = True
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Runs the generator's cleanup (its finally blocks) if the stream ended early."""
        self._done = True
        # Cleanup runs while another exception (often a cancellation) is propagating;
        # an error in the model's cleanup must not replace it.
        with contextlib.suppress(Exception):
            if inspect.isasyncgen(self._generator):
                await self._generator.aclose()
            elif inspect.getgeneratorstate(self._generator) == inspect.GEN_SUSPENDED:
                await self._lease.run_in_thread(self._generator.close)


_END = object()


def _is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def _optional_method(model: Any, name: str) -> Callable[[Any], Any] | None:
    method = getattr(model, name, None)
    return method if callable(method) else None
