import json

from conftest import Api

from slipway.v1 import resources_pb2 as r


async def test_push_becomes_active_and_answers(api: Api):
    pushed = await api.push(api.package("echo", tag="first"))
    assert pushed.model_created
    assert pushed.deployment.name == "development"
    deployment = await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
    answer = json.loads(await api.predict(deployment, b'{"x": 1}'))
    assert answer == {"tag": "first", "input": {"x": 1}}
