"""Rolling promotions and automatic rollback through real processes: controller, gateway,
replicas, and a bounded steady stream of HTTP requests to the model's production."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import grpc
import pytest
from conftest import Api, controller_settings, error_reason, stop_or_explain, wait_until
from google.protobuf import field_mask_pb2

from controller.server import Controller
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r
from slipway.v1 import rollout_service_pb2 as ro
from slipway.v1 import rollout_service_pb2_grpc as ro_grpc

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
ACTIVE = r.DEPLOYMENT_STATE_ACTIVE

# The weighted splits through a gateway run on both data planes (tests/conftest.py).
pytestmark = pytest.mark.both_data_planes


@dataclass
class Answer:
    started: float
    tag: str | None  # None: the request failed
    status: int


@dataclass
class Stream:
    """Callers sending requests to the model's production until stopped (at most `limit`)."""

    url: str
    session: aiohttp.ClientSession
    answers: list[Answer] = field(default_factory=list)
    limit: int = 30_000
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def _call(self) -> None:
        while not self._stop.is_set() and len(self.answers) < self.limit:
            started = time.monotonic()
            headers = {"Content-Type": "application/json", "X-Request-Id": uuid.uuid4().hex}
            try:
                async with self.session.post(self.url, data=b'"hi"', headers=headers) as response:
                    body = await response.read()
                    tag = json.loads(body)["tag"] if response.status == 200 else None
                    self.answers.append(Answer(started, tag, response.status))
            except aiohttp.ClientError:
                self.answers.append(Answer(started, None, 0))

    def start(self, callers: int = 4) -> None:
        self.session.streams.append(self)  # type: ignore[attr-defined]
        self._tasks = [asyncio.create_task(self._call()) for _ in range(callers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def since(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.started >= moment]

    def failed(self, answers: list[Answer] | None = None) -> list[Answer]:
        return [a for a in (self.answers if answers is None else answers) if a.tag is None]


def share(answers: list[Answer], tag: str) -> float:
    served = [a for a in answers if a.tag is not None]
    return sum(1 for a in served if a.tag == tag) / len(served)


@pytest.fixture
async def rollouts(api: Api):
    return ro_grpc.RolloutServiceStub(api.channel)


@pytest.fixture
async def session():
    """An HTTP session; the streams started on it stop before it closes."""
    async with aiohttp.ClientSession() as opened:
        opened.streams = []  # type: ignore[attr-defined]
        yield opened
        for stream in opened.streams:  # type: ignore[attr-defined]
            await stream.stop()


def package(api: Api, tag: str, failure_rate: float = 0.0) -> pathlib.Path:
    """The flaky example, tagged, failing a share of its requests."""
    api._counter += 1
    directory = api.tmp / f"flaky{api._counter}"
    shutil.copytree(EXAMPLES / "flaky", directory)
    config = (directory / "config.yaml").read_text()
    config = config.replace('FAILURE_RATE: "0.3"', f'FAILURE_RATE: "{failure_rate}"').replace(
        'TAG: "flaky"', f'TAG: "{tag}"'
    )
    (directory / "config.yaml").write_text(config)
    return directory


async def set_policy(rollouts, model_id: str, *percent_and_hold, **fields) -> ro.RolloutPolicy:
    # A p99 is judged above 1 s only: on this shared test machine a few slow answers are noise.
    fields.setdefault("latency_floor_seconds", 1.0)
    steps = [ro.RolloutStep(percent=p, hold_seconds=h) for p, h in percent_and_hold]
    policy = ro.RolloutPolicy(model_id=model_id, mode=ro.ROLLOUT_MODE_ROLLING, steps=steps, **fields)
    paths = ["mode", "steps", *fields]
    response = await rollouts.UpdateRolloutPolicy(
        ro.UpdateRolloutPolicyRequest(policy=policy, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )
    return response.policy


async def get_rollout(rollouts, model_id: str) -> ro.Rollout:
    return (await rollouts.GetRollout(ro.GetRolloutRequest(model_id=model_id))).rollout


async def wait_rollout(rollouts, model_id: str, what: str, timeout: float = 60.0, **expected) -> ro.Rollout:
    async def check():
        try:
            rollout = await get_rollout(rollouts, model_id)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # the promotion has not reached its final step yet
                return None
            raise
        return rollout if all(getattr(rollout, k) == v for k, v in expected.items()) else None

    try:
        return await wait_until(check, timeout, what)
    except AssertionError as error:
        raise AssertionError(f"{error}; the rollout: {await get_rollout(rollouts, model_id)}") from None


def routed(gateway, model_id: str) -> dict[str, int]:
    """The production weights the gateway routes by now."""
    model = gateway.follower.index.models.get(model_id)
    if model is None:
        return {}
    env = next((e for e in model.environments if e.name == "production"), None)
    return {d.deployment_id: d.weight for d in env.deployments} if env else {}


async def first_production(api: Api, gateway, session, tag: str = "one"):
    pushed = await api.push(package(api, tag), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(pushed.model.id, pushed.deployment.id)
    await wait_until(lambda: routed(gateway, pushed.model.id) == {pushed.deployment.id: 100}, what="route")
    stream = Stream(f"http://127.0.0.1:{gateway.http_port}/model/{pushed.model.id}/production/predict", session)
    return pushed, stream


async def test_a_healthy_rolling_promotion_follows_its_steps_and_fails_no_request(api: Api, gateway, rollouts, session):
    first, stream = await first_production(api, gateway, session)
    model_id = first.model.id
    await set_policy(rollouts, model_id, (10, 3), (50, 3), (100, 3), min_requests=20)
    stream.start()
    await wait_until(lambda: len(stream.answers) > 20, what="load to start")
    second = await api.push(package(api, "two"), target=ds.PUSH_TARGET_PRODUCTION)
    candidate = second.deployment.id
    measured = {}
    for index, percent in enumerate((10, 50, 100)):
        rollout = await wait_rollout(rollouts, model_id, f"step {percent}%", step_index=index)
        assert rollout.candidate_percent == percent and rollout.state == ro.ROLLOUT_STATE_RAMPING_UP
        if index == 0:  # the model shows its rollout in progress
            (shown,) = (await api.model(model_id)).rollouts
            assert (shown.environment, shown.candidate_deployment_id, shown.previous_deployment_id) == (
                "production",
                candidate,
                first.deployment.id,
            )
            assert shown.state == ro.ROLLOUT_STATE_RAMPING_UP and shown.rollout_id
        weights = {candidate: percent, first.deployment.id: 100 - percent}
        await wait_until(
            lambda w=weights: routed(gateway, model_id) == {d: v for d, v in w.items() if v},
            what=f"the gateway to route {percent}%",
        )
        applied = time.monotonic()
        # The answers to requests sent in the 2 s after the gateway took this step's weights
        # (each step holds 3 s from the controller's switch).
        await wait_until(lambda a=applied: time.monotonic() >= a + 2.0, what=f"answers at {percent}%")
        answers = [a for a in stream.since(applied) if a.started < applied + 2.0]
        measured[percent] = (share(answers, "two"), len(answers))
    rollout = await wait_rollout(rollouts, model_id, "success", state=ro.ROLLOUT_STATE_SUCCEEDED)
    await api.wait_production(model_id, candidate)
    assert not (await api.model(model_id)).rollouts  # none in progress
    await stream.stop()
    print(f"healthy rollout: measured candidate shares {measured}, {len(stream.answers)} requests")
    assert stream.failed() == []
    for percent, (measured_share, count) in measured.items():
        assert count >= 50, f"too few answers at {percent}% to measure: {count}"
        assert measured_share == pytest.approx(percent / 100, abs=0.08), (percent, measured_share, count)
    assert rollout.trigger == "schedule" and rollout.candidate_percent == 100
    events = await api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=candidate))
    types = [e.type for e in events.events]
    assert "rollout.started" in types and types.count("rollout.step") == 3 and "rollout.succeeded" in types


async def test_a_candidate_failing_30_percent_is_rolled_back_automatically(api: Api, gateway, rollouts, session):
    first, stream = await first_production(api, gateway, session)
    model_id = first.model.id
    await set_policy(rollouts, model_id, (10, 60), (50, 60), (100, 60), min_requests=20)
    stream.start()
    await wait_until(lambda: len(stream.answers) > 20, what="load to start")
    bad = await api.push(package(api, "bad", failure_rate=0.3), target=ds.PUSH_TARGET_PRODUCTION)
    rollout = await wait_rollout(rollouts, model_id, "the automatic rollback", state=ro.ROLLOUT_STATE_ROLLED_BACK)
    await wait_until(lambda: routed(gateway, model_id) == {first.deployment.id: 100}, what="traffic back")
    back = time.monotonic()
    await wait_until(lambda: len(stream.since(back)) >= 200, what="answers after the rollback")
    await stream.stop()
    failed = stream.failed()
    print(
        f"automatic rollback: the candidate failed {len(failed)} of {len(stream.answers)} requests; {rollout.message}"
    )
    assert rollout.trigger == "automatic" and "error rate" in rollout.message
    assert rollout.candidate_step_figures.errors > 0 and rollout.candidate_step_figures.requests >= 20
    assert f"({rollout.candidate_step_figures.errors}/{rollout.candidate_step_figures.requests})" in rollout.message
    assert stream.failed(stream.since(back)) == []
    assert all(a.status == 500 for a in failed) and 0 < len(failed) < 100
    model = await api.model(model_id)
    assert model.production_deployment_id == first.deployment.id and not model.promoting_deployment_id
    events = await api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=bad.deployment.id))
    assert any(e.type == "rollout.rolled_back" and "error rate" in e.message for e in events.events)
    assert (await api.get(bad.deployment.id)).active  # the candidate stays visible


async def test_pause_holds_the_share_and_cancel_returns_all_traffic(api: Api, gateway, rollouts, session):
    first, stream = await first_production(api, gateway, session)
    model_id = first.model.id
    await set_policy(rollouts, model_id, (50, 2), (100, 2), min_requests=20)
    stream.start()
    second = await api.push(package(api, "two"), target=ds.PUSH_TARGET_PRODUCTION)
    await wait_rollout(rollouts, model_id, "the first step", step_index=0)
    paused = (await rollouts.PauseRollout(ro.PauseRolloutRequest(model_id=model_id))).rollout
    assert paused.state == ro.ROLLOUT_STATE_PAUSED and paused.candidate_percent == 50
    since = time.monotonic()
    # Held well past the step's 2 s: still 50%, still step 1.
    await wait_until(lambda: time.monotonic() > since + 4 and len(stream.since(since)) >= 200, what="answers")
    held = await get_rollout(rollouts, model_id)
    assert (held.state, held.step_index, held.candidate_percent) == (ro.ROLLOUT_STATE_PAUSED, 0, 50), held.message
    assert share(stream.since(since), "two") == pytest.approx(0.5, abs=0.1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=first.deployment.id))
    assert error_reason(refused.value) in ("ALREADY_PRODUCTION", "PROMOTION_IN_PROGRESS")
    canceled = (await rollouts.CancelRollout(ro.CancelRolloutRequest(model_id=model_id))).rollout
    assert canceled.state == ro.ROLLOUT_STATE_CANCELED and canceled.candidate_percent == 0
    await wait_until(lambda: routed(gateway, model_id) == {first.deployment.id: 100}, what="traffic back")
    back = time.monotonic()
    await wait_until(lambda: len(stream.since(back)) >= 100, what="answers after the cancel")
    await stream.stop()
    assert stream.failed() == []
    assert {a.tag for a in stream.since(back)} == {"one"}
    assert (await api.model(model_id)).production_deployment_id == first.deployment.id
    assert (await api.get(second.deployment.id)).state == ACTIVE  # the candidate stays, with why:
    events = await api.deployments.ListEvents(ds.ListEventsRequest(deployment_id=second.deployment.id))
    assert any(e.type == "rollout.canceled" and first.deployment.id in e.message for e in events.events)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rollouts.ResumeRollout(ro.ResumeRolloutRequest(model_id=model_id))
    assert error_reason(refused.value) == "NO_ROLLOUT_IN_PROGRESS"


async def test_rollback_re_points_production_at_once(api: Api, gateway, rollouts, session):
    first, stream = await first_production(api, gateway, session)
    model_id = first.model.id
    await rollouts.UpdateRolloutPolicy(
        ro.UpdateRolloutPolicyRequest(
            policy=ro.RolloutPolicy(model_id=model_id, mode=ro.ROLLOUT_MODE_IMMEDIATE, keep_previous_warm_seconds=60)
        )
    )
    second = await api.push(package(api, "two"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(model_id, second.deployment.id)
    promoted = await get_rollout(rollouts, model_id)
    assert promoted.state == ro.ROLLOUT_STATE_SUCCEEDED and promoted.previous_deployment_id == first.deployment.id
    stream.start()
    await wait_until(lambda: stream.answers and stream.answers[-1].tag == "two", what="traffic on two")
    asked = time.monotonic()
    response = await rollouts.RollbackEnvironment(ro.RollbackEnvironmentRequest(model_id=model_id))
    assert response.deployment_id == first.deployment.id
    assert response.rollout.state == ro.ROLLOUT_STATE_ROLLED_BACK
    assert (await api.model(model_id)).production_deployment_id == first.deployment.id
    await wait_until(lambda: routed(gateway, model_id) == {first.deployment.id: 100}, timeout=5, what="route")
    repointed = time.monotonic() - asked
    back = time.monotonic()
    await wait_until(lambda: len(stream.since(back)) >= 50, what="answers after the rollback")
    await stream.stop()
    print(f"rollback: the gateway routed to the previous deployment {repointed * 1000:.0f} ms after the call")
    assert stream.failed() == []
    assert {a.tag for a in stream.since(back)} == {"one"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # nothing left to undo
        await rollouts.RollbackEnvironment(ro.RollbackEnvironmentRequest(model_id=model_id))
    assert error_reason(refused.value) == "NOTHING_TO_ROLL_BACK"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"], indirect=True)
async def test_policy_validation_and_refusals(api: Api, rollouts):
    pushed = await api.push(package(api, "one"), target=ds.PUSH_TARGET_PRODUCTION)
    model_id = pushed.model.id
    policy = (await rollouts.GetRolloutPolicy(ro.GetRolloutPolicyRequest(model_id=model_id))).policy
    assert policy.mode == ro.ROLLOUT_MODE_IMMEDIATE and policy.environment == "production"
    cases = [
        (ro.RolloutPolicy(model_id=model_id, max_surge_percent=200), "INVALID_ROLLOUT_POLICY"),
        (
            ro.RolloutPolicy(model_id=model_id, steps=[ro.RolloutStep(percent=50), ro.RolloutStep(percent=20)]),
            "INVALID_ROLLOUT_STEPS",
        ),
        (ro.RolloutPolicy(model_id=model_id), "EMPTY_UPDATE"),
        (ro.RolloutPolicy(model_id=model_id, environment="staging", min_requests=5), "ENVIRONMENT_NOT_FOUND"),
        (ro.RolloutPolicy(model_id=model_id, environment="Bad!", min_requests=5), "INVALID_ENVIRONMENT_NAME"),
        (ro.RolloutPolicy(model_id="nope", min_requests=5), "MODEL_NOT_FOUND"),
    ]
    for sent, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rollouts.UpdateRolloutPolicy(ro.UpdateRolloutPolicyRequest(policy=sent))
        assert error_reason(refused.value) == reason, sent
    updated = await set_policy(rollouts, model_id, (25, 1), (100, 1), min_requests=7, max_p99_ratio=3)
    assert (updated.mode, updated.min_requests, updated.max_p99_ratio) == (ro.ROLLOUT_MODE_ROLLING, 7, 3)
    again = (await rollouts.GetRolloutPolicy(ro.GetRolloutPolicyRequest(model_id=model_id))).policy
    assert [s.percent for s in again.steps] == [25, 100] and again.max_error_rate_increase_points == 2
    for call, request in [
        (rollouts.PauseRollout, ro.PauseRolloutRequest(model_id=model_id)),
        (rollouts.CompleteRollout, ro.CompleteRolloutRequest(model_id=model_id)),
        (rollouts.GetRollout, ro.GetRolloutRequest(model_id=model_id)),
        (rollouts.RollbackEnvironment, ro.RollbackEnvironmentRequest(model_id=model_id)),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)
        assert error_reason(refused.value) in ("NO_ROLLOUT_IN_PROGRESS", "ROLLOUT_NOT_FOUND", "NOTHING_TO_ROLL_BACK")


async def test_a_restarted_controller_resumes_the_rollout_where_it_was(tmp_path):
    data_dir = tmp_path / "data"
    controller = await Controller.start(controller_settings(data_dir))
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            rollouts = ro_grpc.RolloutServiceStub(channel)
            first = await api.push(package(api, "one"), target=ds.PUSH_TARGET_PRODUCTION)
            model_id = first.model.id
            await api.wait_production(model_id, first.deployment.id)
            await set_policy(rollouts, model_id, (50, 4), (100, 1), min_requests=20)
            second = await api.push(package(api, "two"), target=ds.PUSH_TARGET_PRODUCTION)
            before = await wait_rollout(rollouts, model_id, "the first step", step_index=0)
    finally:
        await stop_or_explain(controller.stop(), "controller")
    controller = await Controller.start(controller_settings(data_dir))
    try:
        weights = controller.routes.models[model_id].environments[0].deployments
        assert {d.deployment_id: d.weight for d in weights} == {second.deployment.id: 50, first.deployment.id: 50}
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            rollouts = ro_grpc.RolloutServiceStub(channel)
            after = await get_rollout(rollouts, model_id)
            assert after.id == before.id and after.step_start_time == before.step_start_time
            done = await wait_rollout(rollouts, model_id, "success", state=ro.ROLLOUT_STATE_SUCCEEDED)
            assert done.id == before.id
            await api.wait_production(model_id, second.deployment.id)
            await api.wait_state(second.deployment.id, ACTIVE)
    finally:
        await stop_or_explain(controller.stop(), "controller")


async def test_the_cli_sets_the_policy_shows_rollouts_and_rolls_back(api: Api, controller):
    from click.testing import CliRunner

    from slipway.cli import cli

    def run(*args: str):
        return asyncio.to_thread(CliRunner().invoke, cli, ["--controller", controller.address, *args])

    first = await api.push(package(api, "one"), target=ds.PUSH_TARGET_PRODUCTION)
    model_id = first.model.id
    await api.wait_production(model_id, first.deployment.id)
    result = await run("rollouts", "policy", "--model", "flaky", "--mode", "rolling", "--steps", "50:1,100:1")
    assert result.exit_code == 0, result.output
    assert "rolling" in result.output and "50% (1 s), 100% (1 s)" in result.output
    refused = await run("rollouts", "policy", "--model", "flaky", "--steps", "50,40,100")
    assert refused.exit_code != 0 and "step 2 is 40%" in refused.output
    second = await api.push(package(api, "two"), target=ds.PUSH_TARGET_PRODUCTION)
    await api.wait_production(model_id, second.deployment.id, timeout=60)
    shown = await run("rollouts", "get", "--model", "flaky")
    assert shown.exit_code == 0 and "SUCCEEDED" in shown.output and second.deployment.id in shown.output
    listed = await run("rollouts", "list", "--model", "flaky", "-o", "json")
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["state"] == "ROLLOUT_STATE_SUCCEEDED"
    back = await run("deployments", "rollback", "--model", "flaky")
    assert back.exit_code == 0 and first.deployment.id in back.output, back.output
    assert (await api.model(model_id)).production_deployment_id == first.deployment.id
    none = await run("rollouts", "cancel", "--model", "flaky")
    assert none.exit_code != 0 and "NO_ROLLOUT_IN_PROGRESS" in none.output


async def test_a_deactivated_candidate_fails_the_rollout_and_complete_forces_success(api: Api, rollouts):
    first = await api.push(package(api, "one"), target=ds.PUSH_TARGET_PRODUCTION)
    model_id = first.model.id
    await api.wait_production(model_id, first.deployment.id)
    await set_policy(rollouts, model_id, (50, 600), (100, 600), min_requests=20)
    second = await api.push(package(api, "two"), target=ds.PUSH_TARGET_PRODUCTION)
    await wait_rollout(rollouts, model_id, "the first step", step_index=0)
    await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=second.deployment.id))
    failed = await wait_rollout(rollouts, model_id, "the rollout to fail", state=ro.ROLLOUT_STATE_FAILED)
    assert failed.trigger == "candidate_failed" and "deactivated" in failed.message
    model = await api.model(model_id)
    assert model.production_deployment_id == first.deployment.id and not model.promoting_deployment_id

    third = await api.push(package(api, "three"), target=ds.PUSH_TARGET_PRODUCTION)
    started = await wait_rollout(
        rollouts, model_id, "the next rollout", step_index=0, candidate_deployment_id=third.deployment.id
    )
    assert started.id != failed.id and started.candidate_deployment_id == third.deployment.id
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # one promotion (and rollout) at a time
        await api.deployments.PromoteDeployment(ds.PromoteDeploymentRequest(deployment_id=second.deployment.id))
    assert error_reason(refused.value) in ("PROMOTION_IN_PROGRESS", "DEPLOYMENT_INACTIVE")
    request = ro.CompleteRolloutRequest(model_id=model_id, request_id="complete-1")
    completed = (await rollouts.CompleteRollout(request)).rollout
    assert completed.state == ro.ROLLOUT_STATE_SUCCEEDED and completed.trigger == "user"
    assert (await api.model(model_id)).production_deployment_id == third.deployment.id
    again = (await rollouts.CompleteRollout(request)).rollout  # a retry gets the first answer
    assert again == completed
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rollouts.PauseRollout(ro.PauseRolloutRequest(model_id=model_id, request_id="complete-1"))
    assert error_reason(refused.value) == "REQUEST_ID_REUSED"
    listed = (await rollouts.ListRollouts(ro.ListRolloutsRequest(model_id=model_id, page_size=1))).rollouts
    assert [r.id for r in listed] == [completed.id]


async def test_a_controller_that_lost_the_lease_drives_no_rollout(tmp_path):
    from controller.leader import LeaseLost, LeaseSettings
    from controller.store import default_database_url, open_store

    # A long lease never renewed during the test: only the fence in the database stops it.
    settings = controller_settings(tmp_path / "data", lease=LeaseSettings(600, 300))
    controller = await Controller.start(settings)
    rival = await open_store(default_database_url(settings.data_dir))
    try:
        async with grpc.aio.insecure_channel(controller.address) as channel:
            api = Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path)
            rollouts = ro_grpc.RolloutServiceStub(channel)
            first = await api.push(package(api, "one"), target=ds.PUSH_TARGET_PRODUCTION)
            model_id = first.model.id
            await api.wait_production(model_id, first.deployment.id)
            await set_policy(rollouts, model_id, (50, 1), (100, 1), min_requests=20)
            await api.push(package(api, "two"), target=ds.PUSH_TARGET_PRODUCTION)
            held = await wait_rollout(rollouts, model_id, "the first step", step_index=0)
            async with rival.write() as tx:  # another controller takes the lease
                assert await tx.take_lease("rival", time.time(), 600, force=True) is not None
            with pytest.raises(LeaseLost):
                await controller.rollouts.tick()
            refused = controller.leadership.refused
            over = held.step_start_time.ToSeconds() + 2.0  # its 1 s step is long over, yet:
            await wait_until(
                lambda: controller.leadership.refused > refused + 5 and time.time() > over, what="passes refused"
            )
            still = await get_rollout(rollouts, model_id)
            assert (still.state, still.step_index, still.update_time) == (held.state, 0, held.update_time)
    finally:
        await rival.close()
        await stop_or_explain(controller.stop(), "controller")
