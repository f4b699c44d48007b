"""What a replica asks Ray for, from config.yaml `resources`, and the refusal of a request
no node could hold; and `--runtime ray` without Ray installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from controller.compat import Machine, check_package
from controller.ray_resources import DEFAULT_CPUS, RayResources, ray_resources, unplaceable
from controller.replica_runtime import RAY_MISSING
from replica.package import load_package_config
from tests.conftest import ECHO_MODEL, write_package


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (None, RayResources()),
        ({"cpu": "500m", "memory": "2Gi"}, RayResources(num_cpus=0.5, memory=2 * 1024**3)),
        ({"cpu": "2", "use_gpu": True}, RayResources(num_cpus=2, num_gpus=1)),
        ({"accelerator": "A10G:2"}, RayResources(num_gpus=2, accelerator_type="A10G")),
        ({"accelerator": {"accelerator": "T4", "count": 4}}, RayResources(num_gpus=4, accelerator_type="T4")),
        ({"use_gpu": False, "accelerator": None}, RayResources()),
    ],
)
def test_truss_resources_map_onto_rays(resources, expected):
    assert ray_resources(resources) == expected


def test_ray_options_and_node_fit():
    needs = RayResources(num_cpus=2, memory=10**9, num_gpus=1, accelerator_type="T4")
    assert needs.options() == {"num_cpus": 2, "num_gpus": 1, "memory": 10**9, "accelerator_type": "T4"}
    cpu_node = {"CPU": 8.0, "memory": 1e10}
    gpu_node = {"CPU": 4.0, "memory": 1e10, "GPU": 1.0, "accelerator_type:T4": 1.0}
    assert unplaceable(needs, [cpu_node, gpu_node]) == ""
    why = unplaceable(needs, [cpu_node])
    assert "no node of the Ray cluster can hold a replica that needs 2 CPU" in why and "1 GPU (T4)" in why
    assert unplaceable(RayResources(num_cpus=DEFAULT_CPUS), []) == "the Ray cluster has no alive node"


def test_gpu_requests_are_refused_locally_but_accepted_where_replicas_can_get_one(tmp_path):
    config = load_package_config(
        write_package(tmp_path, "gpu", ECHO_MODEL.format(tag="x"), "resources:\n  use_gpu: true\n")
    )
    with pytest.raises(Exception, match="GPUs are not supported"):
        check_package(config, Machine())
    assert check_package(config, Machine(accelerators=True)) == []


def test_the_ray_runtime_without_ray_fails_at_start_with_a_clear_message(tmp_path):
    script = (
        "import sys; sys.modules['ray'] = None\n"  # what an environment without Ray sees
        "from slipway.entry import main\n"
        f"sys.argv = ['slipway', 'controller', '--runtime', 'ray', '--port', '0', '--data-dir', {str(tmp_path)!r}, "
        "'--insecure-no-auth']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert RAY_MISSING in done.stderr, done.stderr[-2000:]
