"""The CLI reference page (docs/cli.md), generated from raytev's stage registry so that it cannot drift from the
flags: a mkdocs hook fills the page's marker with every command's flags, as `raytev <command> --help` lists them."""

from __future__ import annotations

import dataclasses

from raytev.config.fields import flag_fields, flag_type, is_required, section_at
from raytev.config.stages import STAGES

MARKER = "<!-- cli-reference -->"


def _cell(text: str) -> str:
    """Text that stays inside one cell of a Markdown table."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(field: dataclasses.Field) -> str:
    """A flag's default as the table shows it."""
    if is_required(field):
        return "**required**"
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return f"`{value!r}`" if value not in ("", None) else "—"


def stage_markdown(stage) -> str:
    """One command's section: its description and a table of its flags (the command's own first, then by section)."""
    rows = ["| flag | type | default | what it does |", "| --- | --- | --- | --- |"]
    flags = sorted(flag_fields(stage.config).items(), key=lambda item: item[1][0] != ())
    for name, (path, field) in flags:
        kind, _ = flag_type(section_at(stage.config, path), field)
        names = ", ".join(f"`--{flag}`" for flag in (name, *field.metadata["aliases"]))
        if kind is bool and field.default is True:
            names += f", `--no_{name}`"
        choices = field.metadata["choices"]
        type_name = " \\| ".join(f"`{choice}`" for choice in choices) if choices else kind.__name__
        rows.append(f"| {names} | {type_name} | {_default(field)} | {_cell(field.metadata['help'])} |")
    description = " ".join(stage.config.__doc__.split())
    return f"## raytev {stage.command}\n\n{description}\n\n" + "\n".join(rows) + "\n"


def cli_reference_markdown() -> str:
    """Every command of the registry with every flag (and its Tevatron v1 aliases)."""
    listing = "\n".join(f"- [`raytev {stage.command}`](#raytev-{stage.command.replace(' ', '-')}): {stage.help}"
                        for stage in STAGES)
    return listing + "\n\n" + "\n".join(stage_markdown(stage) for stage in STAGES)


def on_page_markdown(markdown: str, page, **_) -> str:
    """mkdocs hook: the generated reference in place of the marker."""
    return markdown.replace(MARKER, cli_reference_markdown()) if MARKER in markdown else markdown
