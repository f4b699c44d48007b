"""What the CLI waits for after a push or a promotion, and how it names deployments.

The CLI must wait for the outcome the controller defines: a promotion completes when
the new deployment settles (ACTIVE or SCALED_TO_ZERO), and a push to a scaled-to-zero
development deployment leaves it asleep. Deployment commands take `--model M` with a
deployment's name, `development` or `production`.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import test_cli_units
from click.testing import CliRunner, Result
from conftest import Api, controller_settings, stop_or_explain
from test_cli_units import FakeApi, make_package, run

from controller.autoscaler import AutoscalerConfig
from controller.server import Controller
from slipway.cli import cli
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import deployment_service_pb2_grpc as ds_grpc
from slipway.v1 import model_service_pb2_grpc as ms_grpc
from slipway.v1 import resources_pb2 as r

fake, runner = test_cli_units.fake, test_cli_units.runner  # the fixtures of the CLI's fake API

# Short enough that an idle deployment scales to zero in about a second (the
# development deployment's scale-down delay is fixed at 900 s, times this).
TIME_SCALE = 0.001


@pytest.fixture
async def sleepy(tmp_path):
    """A controller whose deployments scale to zero soon after they go idle."""
    settings = controller_settings(
        tmp_path / "data", autoscaler=AutoscalerConfig(time_scale=TIME_SCALE, wake_hold_seconds=0)
    )
    controller = await Controller.start(settings)
    async with grpc.aio.insecure_channel(controller.address) as channel:
        yield (
            Api(channel, ds_grpc.DeploymentServiceStub(channel), ms_grpc.ModelServiceStub(channel), tmp_path),
            controller,
        )
    await stop_or_explain(controller.stop(), "controller")


async def slipway(controller: Controller, *args: str) -> Result:
    """The CLI in a worker thread, so that the in-process controller keeps serving."""
    return await asyncio.to_thread(CliRunner().invoke, cli, ["--controller", controller.address, *args])


async def test_push_to_a_scaled_to_zero_development_deployment_exits_0(sleepy):
    api, controller = sleepy
    package = api.package("dozy")
    pushed = await api.push(package)
    await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
    await api.wait_state(pushed.deployment.id, r.DEPLOYMENT_STATE_SCALED_TO_ZERO)

    (package / "model" / "model.py").write_text((package / "model" / "model.py").read_text().replace("v1", "v2"))
    result = await slipway(controller, "push", str(package), "--timeout", "10")
    assert result.exit_code == 0, result.stderr
    assert "Deployment development is SCALED_TO_ZERO: the next request wakes it." in result.stdout
    deployment = await api.get(pushed.deployment.id)
    assert deployment.revision == 2 and deployment.state == r.DEPLOYMENT_STATE_SCALED_TO_ZERO


def test_push_promote_completes_when_the_new_production_scaled_to_zero_unseen(runner, fake: FakeApi, tmp_path):
    fake.watch_states = [(r.DEPLOYMENT_STATE_DEPLOYING, ""), (r.DEPLOYMENT_STATE_SCALED_TO_ZERO, "")]
    fake.model.production_deployment_id = fake.created.id  # switched by the controller as it scaled to zero
    result = run(runner, fake, "push", str(make_package(tmp_path / "p")), "--promote", "--timeout", "3")
    assert result.exit_code == 0, result.stderr
    assert "is now production." in result.stdout


def test_call_it_line_quotes_the_model_name(runner, fake: FakeApi, tmp_path):
    fake.model.name = "my model; rm -rf ~"
    fake.watch_states = [(r.DEPLOYMENT_STATE_ACTIVE, "")]
    result = run(runner, fake, "push", str(make_package(tmp_path / "p")))
    assert result.exit_code == 0, result.stderr
    assert (
        "Call it:  slipway predict 'my model; rm -rf ~' --deployment development '{\"text\": \"hi\"}'" in result.stdout
    )


async def test_deployment_commands_take_a_model_and_a_name_and_promote_waits(sleepy):
    api, controller = sleepy
    development = (await api.push(api.package("named"))).deployment
    published = (await api.push(api.package("named", "v2"), ds.PUSH_TARGET_PUBLISHED, name="candidate")).deployment

    async def get(*ref: str) -> str:
        result = await slipway(controller, "deployments", "get", "-o", "json", *ref)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    assert f'"id": "{published.id}"' in await get("--model", "named", "candidate")
    assert f'"id": "{development.id}"' in await get("--model", "named", "development")
    assert f'"id": "{published.id}"' in await get(published.id)

    missing = await slipway(controller, "deployments", "get", "--model", "named", "production")
    assert missing.exit_code == 1 and missing.stderr.strip().endswith("has no production deployment")
    unknown = await slipway(controller, "deployments", "get", "--model", "named", "nope")
    assert unknown.exit_code == 1 and len(unknown.stderr.strip().splitlines()) == 1
    assert "has no deployment named 'nope'" in unknown.stderr

    # Production scales to zero at once: the promotion completes, unseen ACTIVE or not.
    promoted = await slipway(controller, "deployments", "promote", "--model", "named", "candidate", "--timeout", "30")
    assert promoted.exit_code == 0, promoted.stderr
    scaled = await slipway(
        controller, "deployments", "autoscaling", "--model", "named", "production", "--scale-down-delay", "0"
    )
    assert scaled.exit_code == 0, scaled.stderr

    from_development = await slipway(controller, "deployments", "promote", "--model", "named", "development")
    assert from_development.exit_code == 0, from_development.stderr
    model = await api.model("named")  # no waiting here: the command waited
    assert model.production_deployment_id not in ("", published.id, development.id)
    assert f"({model.production_deployment_id}) is production." in from_development.stdout
    production = await api.get(model.production_deployment_id)
    assert production.autoscaling_settings.scale_down_delay == 0
