class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        if model_input.get("stream"):
            return self._stream(model_input["chunks"], model_input["chunk_bytes"])
        return {"served": True}

    def _stream(self, chunks, chunk_bytes):
        for _ in range(chunks):
            yield b"x" * chunk_bytes
