import fastapi


class Model:
    def __init__(self, **kwargs):
        pass

    async def websocket(self, websocket: fastapi.WebSocket):
        try:
            while True:
                text = await websocket.receive_text()
                if text == "bye":
                    await websocket.send_json({"bye": True})
                    return  # Truss then closes the session normally
                await websocket.send_text(f"echo: {text}")
        except fastapi.WebSocketDisconnect:
            pass
