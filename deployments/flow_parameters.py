"""A method's flow parameters, from its ``requestSchema``: the typed form of the Prefect UI.

Each top-level property becomes a keyword-only parameter. Prefect publishes a
flow's parameters as JSON Schema (``parameter_openapi_schema``, built by
``prefect.utilities.callables.parameter_schema`` from the signature): here the
schema of each parameter *is* the property's own schema (``WithJsonSchema``),
so the form shows the provider's types, enums, nested objects, defaults and
descriptions, and the server checks runs against them. The Python type only
coerces what Prefect hands the flow; the engine still validates the params
against the whole ``requestSchema`` before anything is sent.

A property whose name cannot be a parameter (``image-url``, ``class``,
``2x``, ``json``, ``return_state``) gets a parameter name of its own
(``image_url``, ``class_``, ``param_2x``, ``json_``, ``return_state_``) and
keeps its name as the field's title; runs take the parameter name. A schema
without properties is one ``params`` object.
"""

from __future__ import annotations

import copy
import inspect
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import Annotated, Any

import pydantic
from pydantic import Field, WithJsonSchema

JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "object": dict[str, Any],
    "array": list[Any],
    "null": type(None),
}

# Names a flow parameter cannot take: Prefect's flow call arguments, the fields
# of the model that validates flow parameters, and pydantic's model attributes.
PREFECT_RESERVED = ("return_state", "wait_for")
VALIDATION_RESERVED = ("v__args", "v__kwargs", "v__positional_only", "v__duplicate_kwargs")
RESERVED_NAMES = frozenset([*PREFECT_RESERVED, *VALIDATION_RESERVED, *dir(pydantic.BaseModel)])

WHOLE_PARAMS = "params"


@dataclass(frozen=True)
class FlowParameter:
    """One flow parameter and the ``requestSchema`` property it fills."""

    name: str
    property_name: str | None  # None: the parameter is the whole params object
    annotation: Any
    default: Any = inspect.Parameter.empty

    def as_inspect_parameter(self) -> inspect.Parameter:
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=self.annotation,
        )


def flow_parameters(request_schema: dict[str, Any] | None) -> list[FlowParameter]:
    """The flow parameters for a ``requestSchema``, in the schema's property order."""
    schema = request_schema or {}
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return [_whole_params(schema)]
    required = set(schema.get("required") or ())
    names = parameter_names(list(properties))
    parameters = []
    for prop, prop_schema in properties.items():
        published = _inline_refs(prop_schema, schema) if isinstance(prop_schema, dict) else {}
        python_type = python_type_of(published)
        if "default" in published:
            default = copy.deepcopy(published["default"])
        elif prop in required:
            default = inspect.Parameter.empty
        else:
            # Left empty in the form: not sent at all.
            default = None
            python_type = python_type | None
        title = published.get("title") or prop
        annotation = Annotated[
            python_type, WithJsonSchema(published), Field(json_schema_extra={"title": title})
        ]
        parameters.append(FlowParameter(names[prop], prop, annotation, default))
    return parameters


def flow_signature(parameters: list[FlowParameter]) -> inspect.Signature:
    return inspect.Signature([parameter.as_inspect_parameter() for parameter in parameters])


def request_params(parameters: list[FlowParameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """The params to send, from the flow's parameter values (``None``: not sent)."""
    params: dict[str, Any] = {}
    for parameter in parameters:
        value = values.get(parameter.name)
        if value is None:
            continue
        if parameter.property_name is None:
            params.update(value)
        else:
            params[parameter.property_name] = value
    return params


def parameter_names(properties: list[str]) -> dict[str, str]:
    """A distinct parameter name per property; usable names are kept as they are."""
    names = {prop: prop for prop in properties if _usable(prop)}
    taken = set(names)
    for prop in properties:
        if prop in names:
            continue
        name = re.sub(r"\W+", "_", prop).strip("_") or "param"
        if name[0].isdigit():
            name = f"param_{name}"
        while not _usable(name) or name in taken:
            name += "_"
        names[prop] = name
        taken.add(name)
    return {prop: names[prop] for prop in properties}


def python_type_of(schema: dict[str, Any]) -> Any:
    """What Prefect coerces a value to: the JSON type's Python type, ``Any`` when unsure."""
    declared = schema.get("type")
    if isinstance(declared, str):
        types = [JSON_TYPES.get(declared, Any)]
    elif isinstance(declared, list):
        types = [JSON_TYPES.get(name, Any) for name in declared]
    elif isinstance(branches := schema.get("oneOf") or schema.get("anyOf"), list):
        types = [python_type_of(b) if isinstance(b, dict) else Any for b in branches]
    else:
        types = [Any]
    if Any in types or not types:
        return Any
    return reduce(or_, dict.fromkeys(types))


def _usable(name: str) -> bool:
    return (
        name.isidentifier()
        and not name.startswith("_")
        and not keyword.iskeyword(name)
        and name not in RESERVED_NAMES
    )


def _whole_params(schema: dict[str, Any]) -> FlowParameter:
    published = {
        key: value
        for key, value in _inline_refs(schema, schema).items()
        if key not in ("$schema", "$id", "$defs", "definitions")
    } or {"type": "object"}
    published.setdefault("description", "Request params (the JSON body; query string for GET).")
    annotation = Annotated[
        dict[str, Any] | None,
        WithJsonSchema(published),
        Field(json_schema_extra={"title": WHOLE_PARAMS}),
    ]
    return FlowParameter(WHOLE_PARAMS, None, annotation, None)


def _inline_refs(node: Any, root: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with local ``$ref``s replaced by their targets.

    The published parameter schema cannot carry the request schema's ``$defs``;
    a recursive or non-local reference becomes ``{}`` (any value), which the
    engine's full validation still checks.
    """
    if isinstance(node, list):
        return [_inline_refs(item, root, seen) for item in node]
    if not isinstance(node, dict):
        return node
    reference = node.get("$ref")
    if isinstance(reference, str):
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        target = _resolve_pointer(root, reference) if reference not in seen else None
        if not isinstance(target, dict):
            return _inline_refs(siblings, root, seen)
        return {
            **_inline_refs(target, root, (*seen, reference)),
            **_inline_refs(siblings, root, seen),
        }
    return {key: _inline_refs(value, root, seen) for key, value in node.items()}


def _resolve_pointer(root: dict[str, Any], reference: str) -> Any:
    if not reference.startswith("#"):
        return None
    target: Any = root
    for part in filter(None, reference[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target
