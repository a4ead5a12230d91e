"""Command-line flags generated from a typed config model: one declaration per knob.

Every field becomes `--field-name` with the field's description and default as its help; a flag
left out is None and does not override the config file. Values reach the model as the text the
user typed and are validated there, so a bad flag fails with the key and the value named.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "empty"
    return str(value)


def _metavar(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _metavar(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _metavar(options[0]) if len(options) == 1 else "VALUE"
    if origin is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(annotation)) + "}"
    if origin in (tuple, list):
        return "A,B,..."
    return {int: "N", float: "X", str: "TEXT"}.get(annotation, "VALUE")


def _is_bool(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(a in (bool, type(None)) for a in typing.get_args(annotation))
    return annotation is bool


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                     model: type[BaseModel], skip: Iterable[str] = (),
                     defaults: BaseModel | None = None) -> list[str]:
    """Add a flag per field of `model` (but `skip`); `defaults` (an instance) supplies the
    defaults shown in the help where they differ from the model's. Returns the field names."""
    names = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        default = getattr(defaults, name) if defaults is not None else field.default
        required = field.is_required() and defaults is None
        shown = "required" if required else f"default {_default_text(default)}"
        help_text = f"{field.description or name.replace('_', ' ')} ({shown})".replace("%", "%%")
        if _is_bool(field.annotation):
            parser.add_argument(flag_name(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag_name(name), dest=name, default=None,
                                metavar=_metavar(field.annotation), help=help_text)
        names.append(name)
    return names


def flag_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The flags of `names` the user gave (None: left out)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
