"""Usage by UTC day (ListUsageRecordsRequest.days): replica intervals split at midnight UTC,
deleted deployments included."""

from __future__ import annotations

import datetime

import grpc
import pytest

from controller.usage import DAY, by_day, first_day
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import resources_pb2 as r
from tests.conftest import error_reason, wait_until

MIDNIGHT = 20_000 * DAY  # 2024-10-04T00:00:00Z


def test_intervals_split_at_utc_midnight_and_clip_to_the_window():
    spans = [
        (MIDNIGHT - 600, MIDNIGHT + 300),  # across midnight
        (MIDNIGHT + 1000, MIDNIGHT + 1100),
        (MIDNIGHT - 3 * DAY, MIDNIGHT - 2 * DAY + 60),  # mostly before the window
        (MIDNIGHT + DAY + 10, None),  # still running
    ]
    since = MIDNIGHT - 2 * DAY
    assert by_day(spans, since, MIDNIGHT + DAY + 70) == [
        ("2024-10-02", 60.0, 0),
        ("2024-10-03", 600.0, 1),
        ("2024-10-04", 400.0, 1),
        ("2024-10-05", 60.0, 1),
    ]
    assert first_day(1, MIDNIGHT + 5) == MIDNIGHT and first_day(3, MIDNIGHT + 5) == MIDNIGHT - 2 * DAY


async def test_usage_records_carry_days_for_deleted_deployments_too(api):
    dev = await api.push(api.package("daily"))
    published = await api.push(api.package("daily", tag="v2"), target=ds.PUSH_TARGET_PUBLISHED)
    await api.wait_state(published.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=published.deployment.id))
    await api.wait_state(dev.deployment.id, r.DEPLOYMENT_STATE_ACTIVE)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()

    async def records():
        answer = await api.deployments.ListUsageRecords(ds.ListUsageRecordsRequest(model_id="daily", days=2))
        found = {u.deployment_id: u for u in answer.usage_records}
        return found if all(found[d].days for d in found) else None

    found = await wait_until(records, 10, "usage by day")
    deleted = found[published.deployment.id]
    assert deleted.deployment_deleted and deleted.days[-1].date == today
    assert deleted.days[-1].replica_starts == 1 and deleted.days[-1].replica_seconds > 0
    # Without days, none; beyond a year, refused.
    plain = await api.deployments.ListUsageRecords(ds.ListUsageRecordsRequest(model_id="daily"))
    assert all(not u.days for u in plain.usage_records)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.deployments.ListUsageRecords(ds.ListUsageRecordsRequest(days=400))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(refused.value) == "INVALID_USAGE_DAYS"
