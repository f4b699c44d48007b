"""Truss's schema of a typed model: GET /v1/models/model/schema answers it.

Derived as Truss derives it (truss/templates/server/_truss_common/schema.py): the input
type is the pydantic model annotating the first parameter of preprocess (else predict);
the output is the return annotation of postprocess (else predict): a pydantic model,
Awaitable[Model], a generator (streaming), or Union[Model, generator] (both). A model
with neither typed input nor output has no schema (None; Truss answers 404).
"""

from __future__ import annotations

import collections.abc
import inspect
import sys
import typing
from collections.abc import Callable
from typing import Any

STREAM_TYPES = (
    collections.abc.Generator,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.AsyncIterator,
)


def truss_schema(
    predict: Callable[..., Any] | None,
    preprocess: Callable[..., Any] | None,
    postprocess: Callable[..., Any] | None,
) -> dict[str, Any] | None:
    pydantic = sys.modules.get("pydantic")  # a model that did not import it cannot be typed with it
    takes, returns = preprocess or predict, postprocess or predict
    if pydantic is None or takes is None or returns is None:
        return None
    input_type = _first_parameter_type(takes)
    output_type, streams = _output(_hints(returns).get("return"))
    input_type = input_type if _is_model(pydantic, input_type) else None
    output_type = output_type if _is_model(pydantic, output_type) else None
    if input_type is None and output_type is None and streams is None:
        return None
    return {
        "input_schema": input_type.model_json_schema() if input_type else None,
        "output_schema": output_type.model_json_schema() if output_type else None,
        "supports_streaming": streams,
    }


def _hints(method: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(method)
    except Exception:  # an annotation naming something the module never imported
        return {}


def _first_parameter_type(method: Callable[..., Any]) -> Any:
    try:
        parameters = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return None
    return _hints(method).get(parameters[0].name) if parameters else None


def _output(annotation: Any) -> tuple[Any, bool | None]:
    """(the data type, whether it streams), as Truss's _parse_output_type."""
    if annotation is None:
        return None, None
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and issubclass(origin, STREAM_TYPES):
        return None, True
    if isinstance(origin, type) and issubclass(origin, collections.abc.Awaitable):
        return typing.get_args(annotation)[0], False
    if origin is typing.Union:
        data = [a for a in typing.get_args(annotation) if not _is_stream(a)]
        return (data[0] if len(data) == 1 else None), True
    return annotation, False


def _is_stream(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return isinstance(origin, type) and issubclass(origin, STREAM_TYPES)


def _is_model(pydantic: Any, annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)
