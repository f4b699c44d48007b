class Model:
    def __init__(self, **kwargs):
        self._config = kwargs.get("config", {})

    def load(self):
        pass

    def predict(self, model_input):
        return {"echo": model_input}
