import time


class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        yield "before the stall;"
        time.sleep(30)
        yield "never sent"
