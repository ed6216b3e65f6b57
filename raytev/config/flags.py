"""Command-line flags from a stage config, with Tevatron's (HfArgumentParser's) conventions.

Written here rather than using transformers.HfArgumentParser because importing transformers costs ~0.7 s on
every command, which dominated a cache-hit `raytev data prepare`. Conventions kept: `--name value`, booleans as
`--flag`, `--flag true|false` and `--no_flag`, aliases from field metadata, and one JSON file holding the same
keys. Required flags and every value are checked by `from_flags`, the one place the Python API uses too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from raytev.config.fields import flag_fields, flag_type, from_flags, is_required, section_at
from raytev.errors import RaytevError

TRUE_WORDS, FALSE_WORDS = {"true", "yes", "1", "y"}, {"false", "no", "0", "n"}
UNSET = object()  # a flag not given on the command line: the config's default applies


def parse_bool(text: str) -> bool:
    """'true'/'false' (and yes/no, 1/0) as a bool."""
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser(config_class: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the config and of its sections, grouped by section."""
    parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=UNSET,
                                     usage=f"{prog} [--flag value ...] | {prog} FLAGS.json",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Flags can also come from one JSON file holding them as keys.")
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    # The stage's own flags first, then each section's.
    for name, (path, field) in sorted(flag_fields(config_class).items(), key=lambda item: item[1][0] != ()):
        if path not in groups:
            owner = section_at(config_class, path)
            title = f"{prog} options" if not path else f"{path[-1]} ({owner.__name__})"
            groups[path] = parser.add_argument_group(title, None if not path else owner.__doc__)
        group = groups[path]
        kind, _ = flag_type(section_at(config_class, path), field)
        names = [f"--{name}", *(f"--{alias}" for alias in field.metadata["aliases"])]
        help_text = field.metadata["help"]
        help_text += " (required)" if is_required(field) else f" (default: {field.default})"
        if kind is bool:
            group.add_argument(*names, dest=name, type=parse_bool, nargs="?", const=True, help=help_text,
                               metavar="true|false")
            if field.default is True:
                group.add_argument(f"--no_{name}", dest=name, action="store_const", const=False,
                                   help=f"Turn off --{name}.")
        else:
            group.add_argument(*names, dest=name, type=kind, choices=field.metadata["choices"], help=help_text)
    return parser


def parse_flags(config_class: type, argv: list[str], prog: str, description: str = ""):
    """The config from command-line flags, or from a single JSON file of the same keys."""
    if len(argv) == 1 and argv[0].endswith(".json"):
        return from_flags(config_class, read_json_flags(Path(argv[0])), argv[0])
    values = vars(build_parser(config_class, prog, description).parse_args(argv))
    return from_flags(config_class, {name: value for name, value in values.items() if value is not UNSET}, prog)


def read_json_flags(path: Path) -> dict:
    """{flag: value} from a JSON object whose keys are flag names."""
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise RaytevError(f"{path}: file not found") from None
    except json.JSONDecodeError as error:
        raise RaytevError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(values, dict):
        raise RaytevError(f"{path}: expected a JSON object of flag names and values")
    return values
