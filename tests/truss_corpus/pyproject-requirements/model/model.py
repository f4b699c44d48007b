from slugify import slugify


class Model:
    def predict(self, model_input):
        return {"slug": slugify(model_input["text"])}
