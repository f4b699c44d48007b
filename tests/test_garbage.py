"""Garbage collection: stored packages and built environments nothing refers to any more."""

from __future__ import annotations

import json
import os
import time

from conftest import ECHO_MODEL, Api, wait_until, write_package

from controller.builds import MARKER, BuildManager
from controller.packages import PackageStore
from controller.server import Controller
from slipway.packaging import archive_package
from slipway.v1 import deployment_service_pb2 as ds
from slipway.v1 import resources_pb2 as r

ACTIVE = r.DEPLOYMENT_STATE_ACTIVE


async def test_packages_no_deployment_or_replica_uses_are_removed(api: Api, controller: Controller):
    packages = controller.reconciler.packages

    deleted = await api.push(api.package("gone"), target=ds.PUSH_TARGET_PUBLISHED)
    await api.wait_state(deleted.deployment.id, ACTIVE)
    await api.deployments.DeleteDeployment(ds.DeleteDeploymentRequest(deployment_id=deleted.deployment.id))
    await wait_until(lambda: not controller.reconciler.replicas_of(deleted.deployment.id), what="replica to stop")

    inactive = await api.push(api.package("idle"), target=ds.PUSH_TARGET_PUBLISHED)
    await api.deployments.DeactivateDeployment(ds.DeactivateDeploymentRequest(deployment_id=inactive.deployment.id))

    dev = await api.push(api.package("dev", tag="v1"))
    await api.wait_state(dev.deployment.id, ACTIVE)
    first = dev.deployment.package_digest
    digests = [first]
    for tag in ("v2", "v3"):
        source = ECHO_MODEL.format(tag=tag).encode()
        patched = await api.deployments.PatchDeployment(
            ds.PatchDeploymentRequest(
                deployment_id=dev.deployment.id,
                base_package_digest=digests[-1],
                patches=[ds.FilePatch(path="model/model.py", content=source)],
            ),
            timeout=60,
        )
        digests.append(patched.package_digest)
    _, middle, current = digests

    assert await controller.reconciler.collect_garbage(grace_seconds=3600) == 0  # all stored just now

    assert await controller.reconciler.collect_garbage(grace_seconds=0) == 2
    stored = {p.name for p in packages.root.iterdir()}
    assert deleted.deployment.package_digest not in stored
    assert f"{deleted.deployment.package_digest}.tar.gz" not in stored
    assert middle not in stored  # an intermediate live-reload version
    assert inactive.deployment.package_digest in stored  # deactivated, not deleted: it may be activated
    assert current in stored
    assert first in stored  # the running development replica was started from it
    assert not [name for name in stored if name.startswith(".")], "nothing moved aside is left behind"

    logs = controller.reconciler.runtime.log_dir
    live_log = logs / f"{served_replica(await api.get(dev.deployment.id))}.log"
    stopped_log = logs / "r-long-stopped.log"
    stopped_log.write_text("old\n")
    week_ago = time.time() - 8 * 86400
    for path in (live_log, stopped_log):
        os.utime(path, (week_ago, week_ago))
    assert await controller.reconciler.collect_garbage(grace_seconds=0) == 1
    assert live_log.exists() and not stopped_log.exists()

    served = await api.get(dev.deployment.id)
    assert json.loads(await api.predict(served))["tag"] == "v3"
    await api.deployments.ActivateDeployment(ds.ActivateDeploymentRequest(deployment_id=inactive.deployment.id))
    await api.wait_state(inactive.deployment.id, ACTIVE)


def served_replica(deployment: r.Deployment) -> str:
    return next(replica.id for replica in deployment.replicas if replica.state == r.REPLICA_STATE_READY)


def test_a_package_pushed_again_is_not_collected_before_its_deployment_commits(tmp_path):
    """A push re-stores an unused package, then commits: the store touched it meanwhile."""
    store = PackageStore(tmp_path / "packages")
    archive, digest = archive_package(write_package(tmp_path / "pkg", "m", ECHO_MODEL.format(tag="x")))
    store.add(archive, digest)
    old = time.time() - 7200
    os.utime(store.directory(digest), (old, old))
    store.add(archive, digest)  # pushed again
    assert store.prune(keep=set(), grace_seconds=3600) == []
    assert store.directory(digest).is_dir()


def test_environments_are_kept_while_a_package_needs_them_or_they_are_building(tmp_path):
    builds = BuildManager(tmp_path / "builds")
    package = tmp_path / "pkg"
    (package / "model").mkdir(parents=True)
    (package / "config.yaml").write_text("model_name: m\nrequirements:\n  - python-slugify==8.0.4\n")
    (package / "model" / "model.py").write_text(ECHO_MODEL.format(tag="x"))
    needed = builds.spec_for(package, "d1").key
    old = time.time() - 7200
    for key in (needed, "unused", "building", "fresh"):
        (builds.env_dir(key)).mkdir()
        (builds.env_dir(key) / MARKER).write_text("{}")
        if key != "fresh":
            os.utime(builds.env_dir(key), (old, old))
    builds._builds["building"] = object()  # a build of that key is running

    doomed = builds.prune({"d1"}, lambda digest: package, grace_seconds=3600)

    assert [p.name.split("-")[1] for p in doomed] == ["unused"]
    left = {p.name for p in builds.envs_dir.iterdir() if not p.name.startswith(".")}
    assert left == {"building", "fresh", needed}
