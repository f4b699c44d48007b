"""A client channel over several controller addresses (`--controller a:7100,b:7100`).

Calls go to one controller at a time, the first reachable one in list order (then the
one that answered last). A controller is reachable when its channel connects: one
that refuses the connection, or does not connect within `connect_timeout`, is skipped
before anything is sent, so any call moves on. A call that was sent and failed with
UNAVAILABLE (the controller went away under it) or DEADLINE_EXCEEDED (it did not answer
in time: paused, say — its connection stays up) is sent again to the next controller,
with the same timeout, only when that is safe: a read (Get…, List…), a mutation with a `request_id` (the
controllers share one database, which applies a request_id once), or any call refused
with reason NOT_LEADER (a follower refuses what only the leader does, a live reload,
before doing anything). Any other call's error is the caller's, as with one controller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

READ_ONLY_PREFIXES = ("Get", "List")
NOT_LEADER = "NOT_LEADER"
SETTLED = frozenset(
    {
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)


def retry_is_safe(method: str, request: Any) -> bool:
    """May a call that reached a controller be sent again to another one?"""
    if method.rsplit("/", 1)[-1].startswith(READ_ONLY_PREFIXES):
        return True
    return bool(getattr(request, "request_id", ""))


def _refused_by_a_follower(failure: grpc.RpcError) -> bool:
    """UNAVAILABLE with ErrorInfo reason NOT_LEADER: nothing was done, any call may go elsewhere."""
    try:
        status = rpc_status.from_call(failure)
    except (ValueError, AttributeError):
        return False
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason == NOT_LEADER
    return False


def reachable(channel: grpc.Channel, timeout: float) -> bool:
    """Connect the channel (if it is not connected) and say whether it is READY. A channel
    in TRANSIENT_FAILURE (refused, or backing off after a failure) is not: no call is sent."""
    settled = threading.Event()
    seen: list[grpc.ChannelConnectivity] = []

    def on_state(state: grpc.ChannelConnectivity) -> None:
        if state in SETTLED:
            seen.append(state)
            settled.set()

    channel.subscribe(on_state, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        channel.unsubscribe(on_state)
    return bool(seen) and seen[0] is grpc.ChannelConnectivity.READY


# grpc's connectivity polling thread notices an unsubscription within 0.2 s; a channel closed
# before that makes it raise (a traceback on stderr as the command exits).
POLL_SETTLE_SECONDS = 0.25


class FailoverChannel(grpc.Channel):
    def __init__(
        self, addresses: Sequence[str], make_channel: Callable[[str], grpc.Channel], connect_timeout: float = 5.0
    ) -> None:
        self.addresses = tuple(addresses)
        self._channels = [make_channel(address) for address in self.addresses]
        self.connect_timeout = connect_timeout
        self.current = 0
        self._probed_at = -POLL_SETTLE_SECONDS

    @property
    def address(self) -> str:
        """The controller calls go to now."""
        return self.addresses[self.current]

    def _order(self) -> list[int]:
        return [(self.current + step) % len(self._channels) for step in range(len(self._channels))]

    def any_reachable(self) -> bool:
        """Move to the first reachable controller from the current one; False if none is."""
        for index in self._order():
            if self._reachable(index):
                self.current = index
                return True
        return False

    def _pick(self) -> int:
        """The first reachable controller (the current one when none is: its call fails as grpc says)."""
        self.any_reachable()
        return self.current

    def _reachable(self, index: int) -> bool:
        self._probed_at = time.monotonic()
        return reachable(self._channels[index], self.connect_timeout)

    def call(self, method: str, request: Any, invoke: Callable[[grpc.Channel], Any]) -> Any:
        """`invoke` on the first reachable controller, again on the next ones while that is safe."""
        error: grpc.RpcError | None = None
        safe = retry_is_safe(method, request)
        for index in self._order():
            if not self._reachable(index):
                continue
            try:
                result = invoke(self._channels[index])
            except grpc.RpcError as failure:
                code = failure.code() if isinstance(failure, grpc.Call) else None
                if code is grpc.StatusCode.DEADLINE_EXCEEDED and safe:
                    error = failure
                    continue
                if code is not grpc.StatusCode.UNAVAILABLE or not (safe or _refused_by_a_follower(failure)):
                    raise
                error = failure
                continue
            self.current = index
            return result
        if error is not None:
            raise error
        return invoke(self._channels[self.current])  # none reachable: grpc's own UNAVAILABLE says why

    # grpc.Channel

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return _UnaryUnary(self, method, request_serializer, response_deserializer, _registered_method)

    def unary_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return lambda request, *args, **kwargs: self._channels[self._pick()].unary_stream(
            method, request_serializer, response_deserializer, _registered_method
        )(request, *args, **kwargs)

    def stream_unary(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return lambda requests, *args, **kwargs: self._channels[self._pick()].stream_unary(
            method, request_serializer, response_deserializer, _registered_method
        )(requests, *args, **kwargs)

    def stream_stream(self, method, request_serializer=None, response_deserializer=None, _registered_method=False):
        return lambda requests, *args, **kwargs: self._channels[self._pick()].stream_stream(
            method, request_serializer, response_deserializer, _registered_method
        )(requests, *args, **kwargs)

    def subscribe(self, callback, try_to_connect=False):
        self._channels[self.current].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback):
        for channel in self._channels:
            channel.unsubscribe(callback)

    def close(self) -> None:
        time.sleep(max(0.0, self._probed_at + POLL_SETTLE_SECONDS - time.monotonic()))
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> FailoverChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _UnaryUnary(grpc.UnaryUnaryMultiCallable):
    def __init__(self, owner: FailoverChannel, method: str, serializer, deserializer, registered) -> None:
        self._owner = owner
        self._method = method
        self._args = (method, serializer, deserializer, registered)

    def _on(self, channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
        return channel.unary_unary(*self._args)

    def __call__(self, request, *args, **kwargs):
        return self._owner.call(self._method, request, lambda channel: self._on(channel)(request, *args, **kwargs))

    def with_call(self, request, *args, **kwargs):
        return self._owner.call(
            self._method, request, lambda channel: self._on(channel).with_call(request, *args, **kwargs)
        )

    def future(self, request, *args, **kwargs):
        return self._on(self._owner._channels[self._owner._pick()]).future(request, *args, **kwargs)
