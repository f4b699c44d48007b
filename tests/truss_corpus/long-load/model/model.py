import time


class Model:
    def __init__(self, **kwargs):
        self._ready = False

    def load(self):
        time.sleep(1.5)
        self._ready = True

    def predict(self, model_input):
        return {"loaded": self._ready, "input": model_input}
