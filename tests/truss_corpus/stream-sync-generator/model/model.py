class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        pass

    def predict(self, model_input):
        for word in model_input["words"]:
            yield word + " "
