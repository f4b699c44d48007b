class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        pass

    def predict(self, model_input):
        text = model_input.get("text", "") if isinstance(model_input, dict) else str(model_input)
        for word in text.split():
            yield word + "\n"
