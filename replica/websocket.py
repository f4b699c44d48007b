"""Truss's websocket models over one bidirectional gRPC call (InvokeWebsocket).

A Truss model with `async def websocket(self, websocket)` is handed a starlette
WebSocket (what fastapi.WebSocket is), already accepted, and uses its whole API
(receive_text, send_json, iter_bytes, close, WebSocketDisconnect, ...). Here that
WebSocket runs over an ASGI receive/send pair backed by the call's frames. As in
Truss, the session is closed with 1000 when the model returns, and with 1011 when it
raises (the error in the log).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from replica.log import Logger
from slipway.v1 import replica_service_pb2 as pb

NORMAL_CLOSURE = 1000
# Truss's close code and reason for a model that raised.
SERVER_ERROR_CODE = 1011
SERVER_ERROR_REASON = "Internal Server Error (in model/chainlet)."
WEBSOCKET_PATH = "/v1/websocket"


async def serve(
    model_websocket: Callable[[Any], Awaitable[None]],
    frames: AsyncIterator[pb.InvokeWebsocketRequest],
    write: Callable[[pb.InvokeWebsocketResponse], Awaitable[None]],
    headers: list[tuple[str, str]],
    log: Logger,
) -> None:
    from starlette.websockets import WebSocket, WebSocketDisconnect

    connected = False

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        try:
            frame = (await anext(frames)).frame
        except StopAsyncIteration:
            return {"type": "websocket.disconnect", "code": NORMAL_CLOSURE, "reason": ""}
        kind = frame.WhichOneof("frame")
        if kind == "text":
            return {"type": "websocket.receive", "text": frame.text}
        if kind == "binary":
            return {"type": "websocket.receive", "bytes": frame.binary}
        return {
            "type": "websocket.disconnect",
            "code": frame.close.code or NORMAL_CLOSURE,
            "reason": frame.close.reason,
        }

    async def send(message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if message.get("text") is not None:
                frame = pb.WebsocketFrame(text=message["text"])
            else:
                frame = pb.WebsocketFrame(binary=message.get("bytes") or b"")
        elif kind == "websocket.close":
            close = pb.WebsocketClose(code=message.get("code", NORMAL_CLOSURE), reason=message.get("reason") or "")
            frame = pb.WebsocketFrame(close=close)
        else:  # websocket.accept: the gateway accepted the client's upgrade already
            return
        await write(pb.InvokeWebsocketResponse(frame=frame))

    scope: dict[str, Any] = {
        "type": "websocket",
        "path": WEBSOCKET_PATH,
        "raw_path": WEBSOCKET_PATH.encode(),
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        "client": None,
        "server": None,
        "subprotocols": [],
        "state": {},
    }
    websocket = WebSocket(scope, receive, send)
    await websocket.accept()
    try:
        await model_websocket(websocket)
        await _close(websocket, NORMAL_CLOSURE, "")
    except WebSocketDisconnect as disconnect:
        log.info("websocket_client_closed", code=disconnect.code)
    except Exception as exc:
        log.error(
            "websocket_failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )
        await _close(websocket, SERVER_ERROR_CODE, SERVER_ERROR_REASON)


async def _close(websocket: Any, code: int, reason: str) -> None:
    # The model may have closed it already (starlette then raises RuntimeError), as Truss allows.
    with contextlib.suppress(RuntimeError):
        await websocket.close(code=code, reason=reason)
