"""How options are declared and checked: option fields carry their flag's metadata, sections group them, and a
config is built from flat flags (the CLI, a JSON file, the Python API's keyword arguments) in one place.

Flags are flat, as Tevatron's are: a stage config's own fields and the fields of its sections are all flags of
the command, each name once. Metadata on a field: `help`, `aliases` (Tevatron v1 names), `choices`, `at_least`,
and for `raytev serve`: `swap` (what of a running application a hot swap of it changes: "model", "index",
"corpus" or "reranker"; none: not swappable), `live` (applied without reloading anything) and `builder` (False:
it places the application or acts in the command's process, and is not one of the application builder's args).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, Field

from raytev.errors import RaytevError


def option(default=MISSING, help: str = "", *, aliases: tuple[str, ...] = (), choices: tuple | None = None,
           at_least: float | None = None, swap: str | tuple[str, ...] = (), live: bool = False,
           builder: bool = True) -> Field:
    """A config field that is a flag; without a default it is required."""
    metadata = {"help": help, "aliases": tuple(aliases), "choices": choices, "at_least": at_least,
                "swap": (swap,) if isinstance(swap, str) else tuple(swap), "live": live, "builder": builder}
    return dataclasses.field(metadata=metadata) if default is MISSING else \
        dataclasses.field(default=default, metadata=metadata)


def section(section_class: type) -> Field:
    """A config field holding a section; it defaults to the section's defaults when it has no required field."""
    metadata = {"section": section_class}
    if any(is_required(field) for field in dataclasses.fields(section_class)):
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default_factory=section_class, metadata=metadata)


def substage(config_class: type, source, **own):
    """A `config_class` (a stage a workflow runs) with `source`'s sections of the same names, and `own` for the rest."""
    shared = {field.name for field in dataclasses.fields(source) if "section" in field.metadata} - set(own)
    return config_class(**own, **{field.name: getattr(source, field.name) for field in dataclasses.fields(config_class)
                                  if "section" in field.metadata and field.name in shared})


def is_required(field: Field) -> bool:
    """Whether a field has no default (a required flag, or a section holding one)."""
    return field.default is MISSING and field.default_factory is MISSING


class Options:
    """Base of sections and stage configs: values are checked against their fields' metadata when made."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value, metadata = getattr(self, field.name), field.metadata
            if "section" in metadata or value is None:
                continue
            if metadata["choices"] is not None and value not in metadata["choices"]:
                raise RaytevError(f"--{field.name} must be one of {', '.join(map(str, metadata['choices']))}, "
                                  f"got {value!r}")
            if metadata["at_least"] is not None and value < metadata["at_least"]:
                floor = metadata["at_least"]
                raise RaytevError(f"--{field.name} must be at least {floor:g}, got {value}" if floor else
                                  f"--{field.name} must be 0 or more, got {value}")
        self.check()

    def check(self) -> None:
        """Rules between fields (a subclass's); single-field rules live in the fields' metadata."""


def flag_fields(config_class: type) -> dict[str, tuple[tuple[str, ...], Field]]:
    """Every flag of a config class: name -> (the path of sections holding it, its field)."""
    flags: dict[str, tuple[tuple[str, ...], Field]] = {}
    for path, field in _walk(config_class, ()):
        if field.name in flags:
            raise TypeError(f"{config_class.__name__}: flag --{field.name} is declared twice "
                            f"({'.'.join(flags[field.name][0]) or 'top'} and {'.'.join(path) or 'top'})")
        flags[field.name] = (path, field)
    return flags


def _walk(config_class: type, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Field]]:
    for field in dataclasses.fields(config_class):
        if "section" in field.metadata:
            yield from _walk(field.metadata["section"], (*path, field.name))
        else:
            yield path, field


def flag_type(config_class: type, field: Field) -> tuple[type, bool]:
    """The scalar type of a flag (bool, int, float or str) and whether it may be None."""
    owner = next(cls for cls in config_class.__mro__ if field.name in getattr(cls, "__annotations__", {}))
    annotation = typing.get_type_hints(owner)[field.name]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return members[0], len(members) < len(typing.get_args(annotation))
    return annotation, False


def section_at(config_class: type, path: tuple[str, ...]) -> type:
    """The section class at `path` (as flag_fields gives it) inside a config class; the class itself for ()."""
    for name in path:
        config_class = next(f for f in dataclasses.fields(config_class) if f.name == name).metadata["section"]
    return config_class


def from_flags(config_class: type, values: dict, source: str):
    """A config from {flag name or alias: value}; unknown, missing and mistyped flags are one clear error."""
    flags = flag_fields(config_class)
    aliases = {alias: name for name, (_, field) in flags.items() for alias in field.metadata["aliases"]}
    named: dict[str, object] = {}
    unknown = []
    for key, value in values.items():
        name = key if key in flags else aliases.get(key)
        if name is None:
            unknown.append(key)
        else:
            named[name] = value
    if unknown:
        raise RaytevError(f"{source}: unknown keys {sorted(unknown)}; the keys are the command's flag names "
                          "without '--'")
    missing = [name for name, (_, field) in flags.items() if is_required(field) and named.get(name) is None]
    if missing:
        listing = "\n".join(f"  --{name}: {flags[name][1].metadata['help']}" for name in missing)
        raise RaytevError(f"{source}: missing required flag{'s' if len(missing) > 1 else ''}:\n{listing}")
    for name, value in named.items():
        _check_type(name, value, *flag_type(section_at(config_class, flags[name][0]), flags[name][1]), source)
    return _build(config_class, (), flags, named)


def _build(config_class: type, path: tuple[str, ...], flags: dict, named: dict):
    arguments = {}
    for field in dataclasses.fields(config_class):
        if "section" in field.metadata:
            arguments[field.name] = _build(field.metadata["section"], (*path, field.name), flags, named)
        elif field.name in named:
            arguments[field.name] = named[field.name]
    return config_class(**arguments)


def _check_type(name: str, value, kind: type, optional: bool, source: str) -> None:
    if value is None and optional:
        return
    good = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        good = True
    if not good:
        words = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
        raise RaytevError(f"{source}: {name} must be {words.get(kind, kind.__name__)}, got {value!r}")


def to_flags(config) -> dict:
    """The flags of a config as {name: value} (the JSON-file form)."""
    return {name: getattr(functools.reduce(getattr, path, config), name)
            for name, (path, _) in flag_fields(type(config)).items()}


def non_default_flags(config) -> dict:
    """The flags whose values differ from their defaults (required ones always)."""
    values = to_flags(config)
    return {name: values[name] for name, (_, field) in flag_fields(type(config)).items() if is_required(field)
            or values[name] != (field.default if field.default is not MISSING else field.default_factory())}
