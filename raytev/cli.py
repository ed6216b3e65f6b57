"""`raytev <command>`: generated from the stage registry. Parse the flags, run the stage, print its summary."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from raytev import __version__
from raytev.config.flags import parse_flags
from raytev.config.stages import STAGES, Stage
from raytev.errors import RaytevError


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
    try:
        config = parse_flags(stage.config, rest, f"raytev {stage.command}", stage.config.__doc__.strip())
        result = stage.function()(config)
        print(result.summary(), flush=True)
        wait = getattr(result, "wait_until_interrupted", None)  # a service runs until Ctrl-C
        if wait is not None:
            wait()
        return 0
    except RaytevError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
