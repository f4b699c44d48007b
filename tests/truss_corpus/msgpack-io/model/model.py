class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        return {"sum": sum(model_input["values"]), "blob_length": len(model_input["blob"]), "blob": model_input["blob"]}
