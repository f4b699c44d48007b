import pathlib

import fastapi


class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input, request: fastapi.Request):
        markers = pathlib.Path(model_input["markers"])
        (markers / "started").touch()
        with request.state.watch_disconnect() as disconnected:
            if disconnected.wait(timeout=60):
                (markers / "saw-disconnect").touch()
                return {"cancelled": True}
        return {"cancelled": False}

    async def completions(self, model_input, request: fastapi.Request):
        return {"disconnected": await request.is_disconnected(), "content_type": request.headers["content-type"]}
