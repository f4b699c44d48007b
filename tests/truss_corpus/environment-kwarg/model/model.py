class Model:
    def __init__(self, environment=None, **kwargs):
        self._environment = environment

    def predict(self, model_input):
        return {"environment": self._environment}
