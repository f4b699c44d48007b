def fetch_weights():
    raise Exception()


class Model:
    def load(self):
        fetch_weights()

    def predict(self, model_input):
        return model_input
