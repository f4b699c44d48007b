"""How the CLI shows resources: aligned tables and details for humans, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from slipway.client import state_name
from slipway.v1 import key_service_pb2 as ks
from slipway.v1 import resources_pb2 as res


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, two spaces apart, no trailing blanks."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells)


def render_details(pairs: Sequence[tuple[str, object]]) -> str:
    """`Key:  value` lines for one resource; empty values are left out."""
    pairs = [(k, v) for k, v in pairs if v not in ("", None)]
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}}  {v}" for k, v in pairs)


def to_dict(message: Message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_json(value: Message | Sequence[Message]) -> str:
    data = to_dict(value) if isinstance(value, Message) else [to_dict(m) for m in value]
    return json.dumps(data, indent=2)


def timestamp(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def kind_name(kind: int) -> str:
    return res.DeploymentKind.Name(kind).removeprefix("DEPLOYMENT_KIND_").lower()


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def autoscaling_line(s: res.AutoscalingSettings) -> str:
    return (
        f"min {s.min_replica}, max {s.max_replica}, window {s.autoscaling_window}s, "
        f"scale-down delay {s.scale_down_delay}s, concurrency target {s.concurrency_target}, "
        f"utilization {s.target_utilization_percentage}%"
    )


Columns = Sequence[tuple[str, Callable[[Any], object]]]

MODEL_COLUMNS: Columns = [
    ("ID", lambda m: m.id),
    ("NAME", lambda m: m.name),
    ("PRODUCTION", lambda m: m.production_deployment_id or "-"),
    ("DEVELOPMENT", lambda m: m.development_deployment_id or "-"),
    ("DEPLOYMENTS", lambda m: m.deployment_count),
    ("CREATED", lambda m: timestamp(m.create_time)),
]
DEPLOYMENT_COLUMNS: Columns = [
    ("ID", lambda d: d.id),
    ("MODEL", lambda d: d.model_id),
    ("NAME", lambda d: d.name),
    ("KIND", lambda d: kind_name(d.kind)),
    ("PROD", lambda d: "*" if d.is_production else ""),
    ("STATE", lambda d: "DELETED" if d.HasField("delete_time") else state_name(d.state)),
    ("ACTIVE", lambda d: yes(d.active)),
    ("REPLICAS", lambda d: f"{d.ready_replicas}/{d.desired_replicas}"),
    ("REV", lambda d: d.revision),
    ("CREATED", lambda d: timestamp(d.create_time)),
]
REPLICA_COLUMNS: Columns = [
    ("REPLICA", lambda r: r.id),
    ("STATE", lambda r: res.ReplicaState.Name(r.state).removeprefix("REPLICA_STATE_")),
    ("ADDRESS", lambda r: r.address or "-"),
    ("PID", lambda r: r.pid or "-"),
    ("REV", lambda r: r.revision),
    ("STARTED", lambda r: timestamp(r.start_time)),
]
USAGE_COLUMNS: Columns = [
    ("MODEL", lambda u: u.model_id),
    ("DEPLOYMENT", lambda u: u.deployment_id),
    ("NAME", lambda u: u.deployment_name),
    ("REPLICA-SECONDS", lambda u: f"{u.replica_seconds:.1f}"),
    ("STARTS", lambda u: u.replica_starts),
    ("DELETED", lambda u: yes(u.deployment_deleted)),
    ("ENVIRONMENT", lambda u: u.environment or "-"),
]
EVENT_COLUMNS: Columns = [
    ("SEQ", lambda e: e.sequence),
    ("TIME", lambda e: timestamp(e.create_time)),
    ("MODEL", lambda e: e.model_id),
    ("DEPLOYMENT", lambda e: e.deployment_id or "-"),
    ("ENVIRONMENT", lambda e: e.environment or "-"),
    ("TYPE", lambda e: e.type),
    ("MESSAGE", lambda e: e.message),
]

KEY_COLUMNS: Columns = [
    ("ID", lambda k: k.id),
    ("PREFIX", lambda k: k.display_prefix + "…"),
    ("NAME", lambda k: k.name or "-"),
    ("SCOPE", lambda k: ks.KeyScope.Name(k.scope).removeprefix("KEY_SCOPE_").lower()),
    ("MODELS", lambda k: ",".join(k.model_ids) or "-"),
    ("CREATED", lambda k: timestamp(k.create_time)),
    ("LAST USED", lambda k: timestamp(k.last_used_time) or "-"),
    ("EXPIRES", lambda k: timestamp(k.expire_time) or "never"),
    ("REVOKED", lambda k: timestamp(k.revoke_time) or "-"),
]
SECRET_COLUMNS: Columns = [
    ("NAME", lambda s: s.name),
    ("CREATED", lambda s: timestamp(s.create_time)),
    ("UPDATED", lambda s: timestamp(s.update_time)),
]


def table(columns: Columns, empty: str) -> Callable[[Sequence[Any]], str]:
    def render(items: Sequence[Any]) -> str:
        if not items:
            return empty
        return render_table([h for h, _ in columns], [[get(i) for _, get in columns] for i in items])

    return render


def model_details(m: res.Model) -> str:
    return render_details(
        [
            ("ID", m.id),
            ("Name", m.name),
            ("Production", m.production_deployment_id or "-"),
            ("Development", m.development_deployment_id or "-"),
            ("Promoting", m.promoting_deployment_id),
            ("Deployments", m.deployment_count),
            ("Created", timestamp(m.create_time)),
            ("Updated", timestamp(m.update_time)),
            ("Deleted", timestamp(m.delete_time)),
        ]
    )


def deployment_details(d: res.Deployment) -> str:
    text = render_details(
        [
            ("ID", d.id),
            ("Model", d.model_id),
            ("Name", d.name),
            ("Kind", kind_name(d.kind)),
            ("Production", yes(d.is_production)),
            ("Environment", d.environment),
            ("Promoting into", d.promoting_environment),
            ("Active", yes(d.active)),
            ("State", state_name(d.state)),
            ("Status", d.status_message),
            ("Replicas", f"{d.ready_replicas} ready / {d.desired_replicas} desired"),
            ("Autoscaling", autoscaling_line(d.autoscaling_settings)),
            ("Revision", d.revision),
            ("Package", d.package_digest),
            ("Source", d.source_deployment_id),
            ("Created", timestamp(d.create_time)),
            ("Updated", timestamp(d.update_time)),
            ("Deleted", timestamp(d.delete_time)),
        ]
    )
    if d.replicas:
        text += "\n\n" + table(REPLICA_COLUMNS, "")(list(d.replicas))
    return text


def autoscaling_details(d: res.Deployment) -> str:
    s = d.autoscaling_settings
    return f"Deployment {d.name} ({d.id})\n" + render_details(
        [(name, getattr(s, name)) for name in res.AutoscalingSettings.DESCRIPTOR.fields_by_name]
    )


def deployment_line(d: res.Deployment) -> str:
    return f"Deployment {d.name} ({d.id}): {state_name(d.state)}, active: {yes(d.active)}"
