from greeting import greet


class Model:
    def predict(self, model_input):
        return {"greeting": greet(model_input["name"])}
