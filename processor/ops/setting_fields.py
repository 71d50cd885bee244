"""What a setting's declaration says, and its problems in the words of the settings.

A setting is a pydantic field (`processor.core.options`, `processor.ops.settings`). The
helpers here read a field: its kind (for the text of an environment variable or a flag),
whether it is optional, its choices and bounds, and the extras of its declaration.

pydantic reports a bad value as an error type (`int_parsing`, `greater_than_equal`,
`literal_error`, ...) at a location in the model. `problem` turns one such error into
the line `processor config check` prints: the setting's key, what is wrong, what is
allowed (bounds and choices read from the field's declaration) and where the value came
from (`from file stage.yaml`, `from environment PROCESSOR_GROUP`, `from flag --group`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

from annotated_types import Ge, Gt, Le
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

_INTEGER = frozenset({"int_type", "int_parsing", "int_from_float"})
_NUMBER = frozenset({"float_type", "float_parsing"})
_BOUND = frozenset({"greater_than_equal", "greater_than", "less_than_equal"})
_UNKNOWN = frozenset({"extra_forbidden", "unexpected_keyword_argument"})


@dataclass(frozen=True, slots=True)
class Context:
    """What `problem` needs to know about the setting an error is about."""

    key: str
    """The setting's dotted key (`batch_size`, `retry.jitter`, `kafka.acks`)."""
    info: FieldInfo | None
    origin: str
    """Where the value came from ("file stage.yaml", "environment PROCESSOR_X"), or ""."""
    raw: object
    """The value as the user wrote it."""
    known: Sequence[str]
    """The keys allowed next to an unknown one."""
    hint: str
    """How to set a missing setting: "set x in the YAML file, PROCESSOR_X or --x"."""


def fields_of(cls: type) -> dict[str, FieldInfo]:
    """The declared fields of a pydantic dataclass, in order."""
    return cast(dict[str, FieldInfo], getattr(cls, "__pydantic_fields__"))  # noqa: B009


def extra(info: FieldInfo) -> dict[str, Any]:
    """The `json_schema_extra` of a declaration (flag name, metavar, group, ...)."""
    return dict(info.json_schema_extra) if isinstance(info.json_schema_extra, dict) else {}


def kind(info: FieldInfo) -> str:
    """int, float, bool, str, choice, list, mapping or nested, from the field's annotation."""
    tp: Any = info.annotation
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            tp = next(a for a in get_args(tp) if a is not NoneType)
        else:
            break
    origin = get_origin(tp)
    if origin is Literal:
        return "choice"
    if origin is tuple or origin is list:
        return "list"
    if origin is Mapping or origin is dict:
        return "mapping"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(tp, "nested")


def optional(info: FieldInfo) -> bool:
    """Whether None is allowed."""
    return NoneType in get_args(info.annotation)


def choices(info: FieldInfo) -> tuple[str, ...]:
    """The allowed values of a `Literal` field (empty for any other)."""
    tp: Any = info.annotation
    return tuple(get_args(tp)) if get_origin(tp) is Literal else ()


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounds(info: FieldInfo) -> str:
    """The declared bounds of a numeric field, as a rule: "must be at least 1"."""
    low = next((m for m in info.metadata if isinstance(m, Ge | Gt)), None)
    high = next((m.le for m in info.metadata if isinstance(m, Le)), None)
    if isinstance(low, Ge) and high is not None:
        return f"must be between {_number(low.ge)} and {_number(high)}"
    if isinstance(low, Gt):
        return f"must be greater than {_number(low.gt)}"
    if isinstance(low, Ge):
        return "must not be negative" if low.ge == 0 else f"must be at least {_number(low.ge)}"
    return f"must be at most {_number(high)}"


def problem(err: ErrorDetails, at: Context) -> str:
    """One line for one pydantic error."""
    loc, kind, key, raw = err["loc"], err["type"], at.key, at.raw
    in_file = at.origin.startswith("file ")
    tail = f" (from {at.origin})" if at.origin else ""
    typed = f"{raw!r} ({type(raw).__name__})" if in_file else repr(raw)
    if kind in _UNKNOWN:
        parent = ".".join(str(p) for p in loc[:-1])
        place = f"in {at.origin.removeprefix('file ')}" if in_file else f"(from {at.origin})"
        return (f"{parent + ': ' if parent else ''}unknown key {loc[-1]!r} {place}; "
                f"known keys: {', '.join(at.known)}")
    if kind == "missing":
        return f"{key}: required; {at.hint}"
    if kind in _INTEGER:
        return f"{key}: expected an integer, got {typed}{tail}"
    if kind in _NUMBER:
        return f"{key}: expected a number, got {typed}{tail}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{key}: expected true or false, got {typed}{tail}"
    if kind == "string_type":
        quote = "; quote it in YAML" if in_file else ""
        return f"{key}: expected a string, got {raw!r} ({type(raw).__name__}){quote}{tail}"
    if kind == "string_too_short":
        return f"{key}: must not be empty{tail}"
    if kind == "too_short":
        return f"{key}: at least one is required{tail}"
    if kind == "literal_error" and at.info is not None:
        return f"{key}: {raw!r} is not allowed; allowed values: " \
               f"{', '.join(choices(at.info))}{tail}"
    if kind in _BOUND and at.info is not None:
        return f"{key}: {bounds(at.info)}, got {_number(raw)}{tail}"
    if kind in ("dict_type", "mapping_type", "dataclass_type", "model_type"):
        return f"{key}: expected a mapping of names to values, got {type(raw).__name__}{tail}"
    if kind in ("tuple_type", "list_type"):
        return f"{key}: expected a list, got {raw!r}{tail}"
    if kind == "value_error" and not loc:  # a rule across fields
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return f"{key or 'configuration'}: {err['msg']}{tail}"
