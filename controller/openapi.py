"""The OpenAPI 3.1 document of the Connect surface, generated from the proto descriptors:
one POST operation per method, request and response bodies in the proto3 JSON mapping."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor

from controller.connect_protocol import CONNECT_CODES

FD = descriptor.FieldDescriptor
INT64_PATTERN = r"^-?[0-9]+$"
UINT64_PATTERN = r"^[0-9]+$"
SCALARS: dict[int, dict] = {
    FD.TYPE_DOUBLE: {"type": "number"},
    FD.TYPE_FLOAT: {"type": "number"},
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    # 64-bit integers are JSON strings in the proto3 mapping (a JavaScript number would lose digits).
    FD.TYPE_INT64: {"type": "string", "format": "int64", "pattern": INT64_PATTERN},
    FD.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": INT64_PATTERN},
    FD.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": INT64_PATTERN},
    FD.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": UINT64_PATTERN},
    FD.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": UINT64_PATTERN},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
# Well-known types have their own JSON forms.
WELL_KNOWN: dict[str, dict] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated lowerCamelCase field paths."},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.DoubleValue": {"type": "number"},
}
CONNECT_ERROR = {
    "type": "object",
    "description": "A Connect error: the gRPC code's Connect name, its message, and the status details "
    "(google.rpc.ErrorInfo carries the machine-readable reason in `debug.reason`).",
    "properties": {
        "code": {"type": "string", "enum": sorted({name for name, _ in CONNECT_CODES.values()})},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "value": {"type": "string"}, "debug": {"type": "object"}},
                "required": ["type", "value"],
            },
        },
    },
    "required": ["code"],
}


def openapi_document(services: Iterable[descriptor.ServiceDescriptor], title: str, version: str) -> dict:
    schemas: dict[str, dict] = {"connect.Error": CONNECT_ERROR}
    paths: dict[str, dict] = {}
    for service in services:
        for method in service.methods:
            if method.client_streaming:
                continue
            paths[f"/{service.full_name}/{method.name}"] = {"post": _operation(service, method, schemas)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "The management API over the Connect protocol: POST a method's request as JSON "
            "(proto3 JSON mapping); server-streaming methods take and return application/connect+json "
            "enveloped messages. Errors are Connect error JSON with HTTP statuses from Connect's mapping.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(service: descriptor.ServiceDescriptor, method: descriptor.MethodDescriptor, schemas: dict) -> dict:
    request = _ref(method.input_type, schemas)
    response = _ref(method.output_type, schemas)
    error = {"$ref": "#/components/schemas/connect.Error"}
    if method.server_streaming:
        content_type = "application/connect+json"
        response_description = (
            "A stream of enveloped messages (1 flag byte, 4-byte big-endian length, JSON), ended by an "
            "envelope with flag 0x02 holding {error?, metadata?}."
        )
    else:
        content_type = "application/json"
        response_description = "The response message."
    responses: dict = {"200": {"description": response_description, "content": {content_type: {"schema": response}}}}
    if not method.server_streaming:
        responses["default"] = {"description": "A Connect error.", "content": {"application/json": {"schema": error}}}
    return {
        "operationId": f"{service.name}_{method.name}",
        "tags": [service.name],
        "requestBody": {"required": True, "content": {content_type: {"schema": request}}},
        "responses": responses,
    }


def _ref(message: descriptor.Descriptor, schemas: dict) -> dict:
    if message.full_name in WELL_KNOWN:
        return WELL_KNOWN[message.full_name]
    if message.full_name not in schemas:
        schemas[message.full_name] = {}  # placed first: a message may refer to itself
        schemas[message.full_name] = _message_schema(message, schemas)
    return {"$ref": f"#/components/schemas/{message.full_name}"}


def _message_schema(message: descriptor.Descriptor, schemas: dict) -> dict:
    properties = {field.json_name: _field_schema(field, schemas) for field in message.fields}
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _field_schema(field: descriptor.FieldDescriptor, schemas: dict) -> dict:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _single_schema(value, schemas)}
    single = _single_schema(field, schemas)
    if field.is_repeated:
        return {"type": "array", "items": single}
    return single


def _single_schema(field: descriptor.FieldDescriptor, schemas: dict) -> dict:
    if field.message_type is not None:
        return _ref(field.message_type, schemas)
    if field.enum_type is not None:
        return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    return dict(SCALARS[field.type])
