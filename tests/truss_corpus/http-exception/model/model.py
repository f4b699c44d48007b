from fastapi import HTTPException
from opentelemetry import trace

tracer = trace.get_tracer(__name__)


class Model:
    def predict(self, model_input):
        with tracer.start_as_current_span("predict"):
            if model_input.get("teapot"):
                raise HTTPException(status_code=418, detail="I'm a teapot")
            if model_input.get("missing"):
                raise HTTPException(status_code=404, detail={"missing": model_input["missing"]})
            return {"ok": True}
