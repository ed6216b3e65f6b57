"""`raytev <command>`: generated from the stage registry. Parse the flags, run the stage, print its summary."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from raytev import __version__
from raytev.config.fields import to_flags
from raytev.config.flags import parse_flags
from raytev.config.stages import STAGES, Stage
from raytev.errors import DiskFullError, user_error_of


def top_level_parser() -> argparse.ArgumentParser:
    """The `raytev` parser: lists the commands; each command parses its own flags."""
    listing = "\n".join(f"  {stage.command:<16}{stage.help}" for stage in STAGES)
    parser = argparse.ArgumentParser(
        prog="raytev",
        usage="raytev <command> [flags]   (raytev <command> --help for its flags)",
        description="Dense retrieval on Ray: Tevatron's train / encode / index / search / evaluate.",
        epilog=f"commands:\n{listing}\n\nA command also accepts one JSON file holding its flags as keys; the Python "
               "API takes the same flags as keyword arguments (raytev.<name>(...): "
               f"{', '.join(stage.api for stage in STAGES)}).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raytev {__version__}")
    return parser


def find_command(argv: list[str]) -> tuple[Stage | None, list[str]]:
    """The stage named by the first words of argv, and the remaining arguments."""
    for stage in sorted(STAGES, key=lambda stage: -len(stage.command.split())):
        words = stage.command.split()
        if argv[:len(words)] == words:
            return stage, argv[len(words):]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `raytev` command; returns the exit code."""
    try:
        return run_command(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # The reader went away (`raytev ... | head`): stop quietly, as Unix tools do. Python would also fail to
        # flush stdout at exit, so it points at /dev/null from here on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def run_command(argv: list[str]) -> int:
    """Run the stage argv names, print its summary; the exit code."""
    stage, rest = find_command(argv)
    if stage is None:
        parser = top_level_parser()
        if argv and not argv[0].startswith("-"):
            parser.print_usage(sys.stderr)
            print(f"raytev: error: unknown command '{' '.join(argv[:2])}'; see `raytev --help`", file=sys.stderr)
            return 2
        parser.parse_args(argv)
        parser.print_help()
        return 0
    config = None
    try:
        config = parse_flags(stage.config, rest, f"raytev {stage.command}", stage.config.__doc__.strip())
        result = stage.function()(config)
        print(result.summary(), flush=True)
        wait = getattr(result, "wait_until_interrupted", None)  # a service runs until Ctrl-C
        if wait is not None:
            wait()
        return 0
    except Exception as error:
        # A RaytevError, maybe inside Ray's task or Train errors, or a disk that filled up anywhere: one line.
        user_error = user_error_of(error)
        if user_error is None:
            raise
        if isinstance(user_error, DiskFullError) and config is not None:
            user_error = user_error.naming(option_choosing(config, user_error.path))
        print(f"error: {user_error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


def option_choosing(config, path: str | None) -> str | None:
    """The flag of `config` whose path holds `path` (the longest one), as --name; None if none does.

    A stage's side outputs are named after its output (`out.retrieval`, `out.shards`), so they count as its own.
    """
    if not path:
        return None
    written = os.path.abspath(os.path.expanduser(path))
    best, length = None, 0
    for name, value in to_flags(config).items():
        if not isinstance(value, str) or not value or "://" in value:
            continue
        folder = os.path.abspath(os.path.expanduser(value))
        holds = written == folder or written.startswith((folder + os.sep, folder + "."))
        if holds and len(folder) > length:
            best, length = f"--{name}", len(folder)
    return best
