"""`slipway environments ...`, `slipway deployments promote --environment` and `slipway push
--promote --environment` against a real controller: they create, scale, list and delete
environments, and wait until the promoted deployment is the environment's."""

from __future__ import annotations

import json

from conftest import Api
from test_cli_wait import slipway

from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import resources_pb2 as r


async def test_environment_commands(api: Api, controller):
    dev = await api.push(api.package("shop"))
    await api.wait_state(dev.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)

    created = await slipway(controller, "environments", "create", "--model", "shop", "staging", "--max-replica", "2")
    assert created.exit_code == 0, created.stderr
    assert "Created environment staging" in created.stdout
    bad = await slipway(controller, "environments", "create", "--model", "shop", "Staging")
    assert bad.exit_code == 1 and "INVALID_ENVIRONMENT_NAME" in bad.stderr

    promoted = await slipway(
        controller, "deployments", "promote", "--model", "shop", "development", "--environment", "staging"
    )
    assert promoted.exit_code == 0, promoted.stderr
    listed = await slipway(controller, "environments", "list", "--model", "shop", "--output", "json")
    assert listed.exit_code == 0, listed.stderr
    by_name = {e["name"]: e for e in json.loads(listed.stdout)}
    assert set(by_name) == {"production", "staging"}
    staged = by_name["staging"]["deployment_id"]
    assert f"({staged}) is staging." in promoted.stdout
    assert by_name["staging"]["autoscaling_settings"]["max_replica"] == 2
    assert by_name["production"]["deployment_id"] == ""

    scaled = await slipway(
        controller, "environments", "autoscaling", "--model", "shop", "staging", "--scale-down-delay", "0"
    )
    assert scaled.exit_code == 0, scaled.stderr
    assert "scale-down delay 0s" in scaled.stdout
    assert (await api.get(staged)).autoscaling_settings.scale_down_delay == 0

    pushed = await slipway(
        controller, "push", str(api.package("shop", tag="two")), "--environment", "staging", "--timeout", "60"
    )
    assert pushed.exit_code == 0, pushed.stderr
    assert "is now staging." in pushed.stdout
    shown = await slipway(controller, "environments", "get", "--model", "shop", "staging")
    assert shown.exit_code == 0 and staged not in shown.stdout  # a new deployment took staging
    missing = await slipway(controller, "push", str(api.package("shop")), "--environment", "nowhere", "--no-wait")
    assert missing.exit_code == 1 and "ENVIRONMENT_NOT_FOUND" in missing.stderr

    deleted = await slipway(controller, "environments", "delete", "--model", "shop", "staging", "--yes")
    assert deleted.exit_code == 0, deleted.stderr
    assert "stays published" in deleted.stdout
    events = await api.deployments.ListEvents(ds.ListEventsRequest(model_id="shop", environment="staging"))
    assert events.events[-1].type == "environment.deleted"
