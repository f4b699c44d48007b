"""What a replica asks Ray for, from its package's config.yaml `resources` (Truss keys), and
whether any node of the cluster could ever hold it. Pure functions: no Ray here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.compat import _cpus, _memory_bytes, is_empty

# A replica that names no CPU amount reserves this much (Truss's default is one CPU; a
# model server mostly waits on requests, and a small reservation lets replicas share nodes).
DEFAULT_CPUS = 1.0


@dataclass(frozen=True)
class RayResources:
    num_cpus: float = DEFAULT_CPUS
    memory: int | None = None  # bytes
    num_gpus: float = 0.0
    accelerator_type: str | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments of an actor's .options()."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory:
            options["memory"] = self.memory
        if self.accelerator_type:
            options["accelerator_type"] = self.accelerator_type
        return options

    def needs(self) -> dict[str, float]:
        """As Ray counts them on a node (its `Resources`)."""
        needs = {"CPU": self.num_cpus}
        if self.memory:
            needs["memory"] = float(self.memory)
        if self.num_gpus:
            needs["GPU"] = self.num_gpus
        if self.accelerator_type:
            needs[f"accelerator_type:{self.accelerator_type}"] = 0.001
        return needs

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU"]
        if self.memory:
            parts.append(f"{self.memory / 1024**3:.1f}Gi memory")
        if self.num_gpus:
            parts.append(f"{self.num_gpus:g} GPU" + (f" ({self.accelerator_type})" if self.accelerator_type else ""))
        return ", ".join(parts)


def ray_resources(resources: Any) -> RayResources:
    """config.yaml `resources` → Ray's: cpu ('1', '500m') → num_cpus, memory ('2Gi') →
    memory, use_gpu / accelerator ('T4', 'A10G:2', or {accelerator, count}) → num_gpus and
    accelerator_type. The package was checked at push (controller/compat.py)."""
    if not isinstance(resources, Mapping):
        return RayResources()
    cpus = _cpus(resources.get("cpu"))
    memory = _memory_bytes(resources.get("memory"))
    accelerator = resources.get("accelerator")
    count = 1.0
    if isinstance(accelerator, Mapping):
        count = float(accelerator.get("count") or 1)
        accelerator = accelerator.get("accelerator")
    kind: str | None = None
    if not is_empty(accelerator):
        text = str(accelerator).strip()
        kind, _, number = text.partition(":")
        if number:
            count = float(number)
    gpus = count if kind or resources.get("use_gpu") is True else 0.0
    return RayResources(
        num_cpus=DEFAULT_CPUS if cpus is None else cpus,
        memory=memory,
        num_gpus=gpus,
        accelerator_type=kind or None,
    )


def unplaceable(needs: RayResources, nodes: Sequence[Mapping[str, float]]) -> str:
    """Why no node (their total `Resources`) could ever hold a replica; "" when one could."""
    wanted = needs.needs()
    for node in nodes:
        if all(node.get(name, 0.0) >= amount for name, amount in wanted.items()):
            return ""
    if not nodes:
        return "the Ray cluster has no alive node"
    largest = max(nodes, key=lambda node: (node.get("GPU", 0.0), node.get("CPU", 0.0)))
    have = f"{largest.get('CPU', 0):g} CPU, {largest.get('memory', 0) / 1024**3:.1f}Gi memory, {largest.get('GPU', 0):g} GPU"
    return (
        f"no node of the Ray cluster can hold a replica that needs {needs.describe()} "
        f"(config.yaml resources; the largest of {len(nodes)} nodes has {have}); add such a node or lower the request"
    )
