import asyncio


class Model:
    def __init__(self, **kwargs):
        pass

    async def preprocess(self, model_input):
        await asyncio.sleep(0)
        return {"stages": ["pre"], "value": model_input["value"] + 1}

    async def predict(self, model_input):
        await asyncio.sleep(0)
        return {"stages": model_input["stages"] + ["predict"], "value": model_input["value"] * 10}

    async def postprocess(self, model_output):
        await asyncio.sleep(0)
        return {"stages": model_output["stages"] + ["post"], "value": model_output["value"] - 1}
