"""Command-line flags from option dataclasses, with Tevatron's (HfArgumentParser's) conventions.

Written here rather than using transformers.HfArgumentParser because importing transformers costs ~0.7 s
on every command, which dominated a cache-hit `raytev data prepare`. Conventions kept: `--name value`,
booleans as `--flag`, `--flag true|false` and `--no_flag`, aliases from field metadata, and one JSON file
holding the same keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

from raytev.errors import RaytevError

TRUE_WORDS, FALSE_WORDS = {"true", "yes", "1", "y"}, {"false", "no", "0", "n"}


def parse_bool(text: str) -> bool:
    """'true'/'false' (and yes/no, 1/0) as a bool."""
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _base_type(annotation) -> tuple[type, bool]:
    """The scalar type of a field annotation and whether it may be None."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0]
    return annotation, optional


def build_parser(option_classes: tuple[type, ...], prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for option_class in option_classes:
        group = parser.add_argument_group(option_class.__name__, option_class.__doc__)
        hints = typing.get_type_hints(option_class)
        for field in dataclasses.fields(option_class):
            kind, _ = _base_type(hints[field.name])
            names = [f"--{field.name}", *field.metadata.get("aliases", [])]
            kwargs = {"dest": field.name, "help": field.metadata.get("help", ""), "default": field.default}
            if kind is bool:
                group.add_argument(*names, type=parse_bool, nargs="?", const=True, **kwargs)
                if field.default is True:
                    group.add_argument(f"--no_{field.name}", dest=field.name, action="store_false",
                                       help=f"Turn off --{field.name}.")
            else:
                group.add_argument(*names, type=kind, choices=field.metadata.get("choices"), **kwargs)
    return parser


def parse_options(option_classes: tuple[type, ...], argv: list[str], prog: str, description: str) -> tuple:
    """Instances of the option dataclasses from CLI flags, or from a single JSON file of the same keys."""
    if len(argv) == 1 and argv[0].endswith(".json"):
        return options_from_json(option_classes, Path(argv[0]))
    values = vars(build_parser(option_classes, prog, description).parse_args(argv))
    return tuple(option_class(**{field.name: values[field.name] for field in dataclasses.fields(option_class)})
                 for option_class in option_classes)


def options_from_json(option_classes: tuple[type, ...], path: Path) -> tuple:
    """Option dataclasses from a JSON object whose keys are flag names."""
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise RaytevError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise RaytevError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(values, dict):
        raise RaytevError(f"{path}: expected a JSON object of flag names and values")
    return options_from_dict(option_classes, values, str(path))


def options_from_dict(option_classes: tuple[type, ...], values: dict, source: str = "options") -> tuple:
    """Option dataclasses from {flag name: value} (a JSON file, or the Python API's keyword arguments)."""
    known = {field.name for option_class in option_classes for field in dataclasses.fields(option_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RaytevError(f"{source}: unknown keys {unknown}; the keys are the command's flag names without '--'")
    return tuple(option_class(**{field.name: values[field.name] for field in dataclasses.fields(option_class)
                                 if field.name in values})
                 for option_class in option_classes)
