from shared_helpers import shout


class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        return {"said": shout(model_input["text"])}
