"""Command-line flags from a frozen dataclass: the typed options of a verb that must run where
pydantic is not installed (`twostep device`, on a phone). One declaration per knob, as
`twostep/config_flags.py` does for the pydantic configs: each field's `option(...)` holds its
default, help, choices or bounds and how its text is read; the dataclass checks itself."""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Iterable[str] | None = None,
           low: float | None = None, high: float | None = None, above: bool = False,
           read: Callable[[str], Any] | None = None) -> Any:
    """A field of an options dataclass: `low`/`high` bound it (`above`: strictly above `low`),
    `read` turns its text into a value (e.g. a bandwidth with a unit)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None,
            "low": low, "high": high, "above": above, "read": read}
    return dataclasses.field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return options[0]
    return annotation


def _reader(read: Callable[[str], Any]) -> Callable[[str], Any]:
    """`read`, with its ValueError's own words as argparse's message."""
    def parse(text: str) -> Any:
        try:
            return read(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = getattr(read, "__name__", "value")
    return parse


def check_options(options: Any) -> None:
    """Every bounded or chosen field of `options` in range; ValueError naming the flag."""
    for f in dataclasses.fields(options):
        value, meta = getattr(options, f.name), f.metadata
        if value is None or isinstance(value, bool):
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise ValueError(f"{_flag(f.name)} must be one of {', '.join(meta['choices'])}, got {value!r}")
        low, high = meta.get("low"), meta.get("high")
        if isinstance(value, int | float) and (
                not math.isfinite(value)
                or (low is not None and (value <= low if meta.get("above") else value < low))
                or (high is not None and value > high)):
            low_text = "-inf" if low is None else f"{low:g}"
            bracket = "(" if meta.get("above") else "["
            raise ValueError(f"{_flag(f.name)} must be in {bracket}{low_text}, "
                             f"{'inf' if high is None else f'{high:g}'}], got {value!r}")


def add_option_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                     skip: Iterable[str] = ()) -> list[str]:
    """A flag per field of the options dataclass `cls` (but `skip`); returns the field names."""
    names, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta, kind = f.metadata, _base_type(hints[f.name])
        required = f.default is dataclasses.MISSING
        default_text = "required" if required else (
            "none" if f.default is None else ("on" if f.default is True else "off")
            if isinstance(f.default, bool) else str(f.default))
        help_text = f"{meta.get('help') or f.name.replace('_', ' ')} (default {default_text})"
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            parser.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            metavar = None if meta.get("choices") else {int: "N", float: "X"}.get(kind, "TEXT")
            parser.add_argument(_flag(f.name), dest=f.name, default=None, choices=meta.get("choices"),
                                type=_reader(meta["read"]) if meta.get("read") else kind,
                                help=help_text, metavar=metavar)
        names.append(f.name)
    return names


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """`cls` from the flags given (those left out keep their defaults); ValueError naming a
    missing or bad one."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in given]
    if missing:
        raise ValueError(f"{', '.join(_flag(name) for name in missing)} is required")
    return cls(**given)
