class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        yield "first chunk;"
        raise RuntimeError("the tokenizer broke mid-stream")
