"""Field descriptions for the OpenAPI and AsyncAPI documents, taken from the comment beside each field
in the model's source: `width: int | None = None  # txt2img only` documents `width` as "txt2img only".
So the models stay the single place a field is explained."""

import inspect
import re
import typing
from collections.abc import Callable, Iterable, Iterator
from functools import cache

import msgspec
from pydantic import BaseModel

FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")
NOT_PROSE = ("type:", "noqa", "pragma")


def _is_model(tp) -> bool:
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or issubclass(tp, msgspec.Struct))


def _fields(cls: type) -> dict[str, object]:
    if issubclass(cls, BaseModel):
        return {name: f.annotation for name, f in cls.model_fields.items()}
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


@cache
def comments(cls: type) -> dict[str, str]:
    """{field: its comment} for a pydantic model or msgspec Struct, inherited fields included."""
    names, out = _fields(cls), {}
    for klass in reversed(cls.__mro__):
        if not _is_model(klass) or klass in (BaseModel, msgspec.Struct):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()[1:]
        except (OSError, TypeError):
            continue
        for line in lines:
            match = FIELD.match(line)
            if match and match[1] in names and not match[2].startswith(NOT_PROSE):
                out[match[1]] = match[2]
    return out


def _models(types: Iterable, seen: set) -> Iterator[type]:
    for tp in types:
        if _is_model(tp):
            if tp in seen:
                continue
            seen.add(tp)
            yield tp
            yield from _models(_fields(tp).values(), seen)
        else:
            yield from _models(typing.get_args(tp), seen)


def describe(components: dict, roots: Iterable, name_of: Callable[[type], str] = lambda cls: cls.__name__) -> None:
    """Give the properties of each component schema reachable from `roots` their source comments."""
    for cls in _models(roots, set()):
        schema = components.get(name_of(cls))
        if not schema or schema.get("title") != cls.__name__:
            continue
        for field, text in comments(cls).items():
            prop = schema.get("properties", {}).get(field)
            if prop is not None and "description" not in prop:
                prop["description"] = text
