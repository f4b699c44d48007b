import os
import random


class Model:
    """Answers {"tag": TAG, "input": ...}, and raises for a random FAILURE_RATE share of requests."""

    def __init__(self, **kwargs):
        self.failure_rate = float(os.environ.get("FAILURE_RATE", "0"))
        self.tag = os.environ.get("TAG", "flaky")

    def load(self):
        pass

    def predict(self, model_input):
        if random.random() < self.failure_rate:
            raise RuntimeError(f"flaky: failed on purpose (FAILURE_RATE={self.failure_rate})")
        return {"tag": self.tag, "input": model_input}
