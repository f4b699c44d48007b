import time


class Model:
    def __init__(self, **kwargs):
        pass

    def predict(self, model_input):
        return {"method": "predict"}

    def chat_completions(self, model_input):
        last = model_input["messages"][-1]["content"]
        if model_input.get("stream"):
            return self._stream(last)
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_input.get("model", "echo"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": f"echo: {last}"}, "finish_reason": "stop"}
            ],
        }

    def _stream(self, text):
        for word in text.split():
            yield f'data: {{"choices": [{{"delta": {{"content": "{word}"}}}}]}}\n\n'
        yield "data: [DONE]\n\n"

    async def completions(self, model_input):
        return {"object": "text_completion", "choices": [{"index": 0, "text": model_input["prompt"][::-1]}]}
