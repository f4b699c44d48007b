"""Validation of what callers send: references, names, metadata, autoscaling settings
(pure functions; the lifecycle service calls them before any rule of controller/domain.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from controller.domain import AUTOSCALING_FIELDS, DEVELOPMENT_NAME, NAME_PATTERN, AutoscalingLimits, AutoscalingSettings
from controller.errors import AlreadyExists, InvalidArgument
from slipway.text import shorten

# Model names come from config.yaml (Truss allows spaces); they also stand for the model ID
# in URLs and CLI arguments, so no slash, no control characters, no surrounding blanks.
MODEL_NAME_MAX_LENGTH = 128


# What an ID looks like: a prefix and 12 base32 characters (controller/store new_id). A
# model may also be referred to by name, so a reference is bounded like a model name.
REFERENCE_MAX_LENGTH = MODEL_NAME_MAX_LENGTH
# How much of a refused value a message shows.
ECHOED_VALUE_BYTES = 64


def _has_control_characters(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def validate_reference(field_name: str, value: str) -> None:
    """Refuse an ID (or model name) that cannot name anything, before it is looked up or echoed."""
    if len(value) > REFERENCE_MAX_LENGTH or _has_control_characters(value):
        raise InvalidArgument(
            "INVALID_ID",
            f"{field_name} {shorten(value, ECHOED_VALUE_BYTES)!r} is not an ID or name: those are at most "
            f"{REFERENCE_MAX_LENGTH} characters, without control characters",
            field=field_name,
        )


def validate_model_name(name: str) -> None:
    if not name or not name.strip():
        raise InvalidArgument(
            "MISSING_MODEL_NAME",
            "config.yaml sets no model_name: name the model in the push (slipway push --model-name NAME, "
            "CreateDeploymentRequest.model_name) or set model_name in config.yaml",
        )
    problem = (
        f"is longer than {MODEL_NAME_MAX_LENGTH} characters"
        if len(name) > MODEL_NAME_MAX_LENGTH
        else "has leading or trailing blanks"
        if name != name.strip()
        else "contains '/'"
        if "/" in name
        else "contains control characters"
        if _has_control_characters(name)
        else ""
    )
    if problem:
        raise InvalidArgument(
            "INVALID_MODEL_NAME", f"model_name {shorten(name, ECHOED_VALUE_BYTES)!r} {problem}", name=name
        )


METADATA_MAX_BYTES = 16 * 1024


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    """A push's metadata (`truss push --metadata`) as the JSON text recorded for it."""
    text = json.dumps(_whole_numbers(dict(metadata)), sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > METADATA_MAX_BYTES:
        raise InvalidArgument(
            "METADATA_TOO_LARGE",
            f"metadata is {len(text.encode())} bytes as JSON; at most {METADATA_MAX_BYTES} are allowed",
        )
    return text


def _whole_numbers(value: Any) -> Any:
    """protobuf's Struct holds every number as a double: 3 arrives as 3.0, and is written 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def validate_deployment_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            "INVALID_DEPLOYMENT_NAME",
            f"deployment name {shorten(name, ECHOED_VALUE_BYTES)!r} must be 1 to 63 letters, digits, '_', '.' or '-'",
            name=name,
        )
    if name == DEVELOPMENT_NAME:
        raise InvalidArgument(
            "RESERVED_DEPLOYMENT_NAME",
            f"the name {DEVELOPMENT_NAME!r} is reserved for the development deployment",
            name=name,
        )


def validate_autoscaling(settings: AutoscalingSettings, limits: AutoscalingLimits) -> None:
    for name in AUTOSCALING_FIELDS:
        value = getattr(settings, name)
        low, high = getattr(limits, name)
        if not low <= value <= high:
            raise InvalidArgument(
                "AUTOSCALING_OUT_OF_RANGE",
                f"autoscaling_settings.{name} = {value} is outside the allowed range [{low}, {high}]",
                field=name,
                value=value,
            )
    if settings.max_replica < settings.min_replica:
        raise InvalidArgument(
            "AUTOSCALING_MAX_BELOW_MIN",
            f"autoscaling_settings.max_replica ({settings.max_replica}) is below min_replica ({settings.min_replica})",
        )


def default_deployment_name(next_number: int, taken: set[str]) -> tuple[str, int]:
    """The first free `deployment-N` from next_number on, and the number after it."""
    number = next_number
    while f"deployment-{number}" in taken:
        number += 1
    return f"deployment-{number}", number + 1


def require_unique_name(name: str, taken: set[str], model_id: str) -> None:
    if name in taken:
        raise AlreadyExists(
            "DEPLOYMENT_NAME_TAKEN",
            f"model {model_id} already has a deployment named {name!r}",
            name=name,
            model_id=model_id,
        )
