import asyncio


class Model:
    def __init__(self, **kwargs):
        pass

    async def predict(self, model_input):
        for i in range(model_input["n"]):
            await asyncio.sleep(0)
            yield f"token-{i};"
