import os
import uuid


class Model:
    def __init__(self, **kwargs):
        self.instance = uuid.uuid4().hex

    def is_healthy(self):
        return not os.path.exists(os.environ["UNHEALTHY_MARKER"])

    def predict(self, model_input):
        return {"instance": self.instance}
