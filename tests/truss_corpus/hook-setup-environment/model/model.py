class Model:
    def __init__(self, **kwargs):
        self.calls = []

    def setup_environment(self, environment):
        self.calls.append(("setup_environment", environment))

    def load(self):
        self.calls.append(("load", None))

    def predict(self, model_input):
        return {"calls": self.calls}
