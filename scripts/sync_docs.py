"""Regenerate the docs' generated references from the code they describe.

    .venv/bin/python scripts/sync_docs.py

Each reference sits in one page between `<!-- NAME:start -->` and `<!-- NAME:end -->`:

    spec-reference    docs/sweeps.md   `orch docs`, from the pydantic SweepSpec
    config-reference  docs/trainer.md  `python -m trainer docs`, from the pydantic Config
    cli-reference     docs/cli.md      every `orch` command's `--help`, plain text

tests/test_docs.py checks that each page holds exactly what its command prints now.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Reference:
    """A generated section: its marker name, the page that holds it, the command printing it."""

    name: str
    page: str
    command: tuple[str, ...]


REFERENCES = [
    Reference("spec-reference", "docs/sweeps.md", (sys.executable, "-m", "orchestrator", "docs")),
    Reference("config-reference", "docs/trainer.md", (sys.executable, "-m", "trainer", "docs")),
    Reference("cli-reference", "docs/cli.md", (sys.executable, __file__, "--cli-help")),
]


def marked(name: str) -> tuple[str, str]:
    """The start and end markers of a generated section."""
    return f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"


def generated(ref: Reference) -> str:
    """What the section should hold, straight from the command that renders it. Help is
    rendered without rich and at a fixed width, so it is the same on every terminal."""
    env = {**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "100", "PYTHONPATH": str(ROOT)}
    return subprocess.run(ref.command, capture_output=True, text=True, check=True, cwd=ROOT,
                          env=env).stdout


def embedded(ref: Reference) -> str:
    """The section as its page holds it now."""
    text = (ROOT / ref.page).read_text()
    start, end = marked(ref.name)
    return text[text.index(start) + len(start): text.index(end)]


def cli_help() -> str:
    """Every `orch` command's help as Markdown: a heading and the plain `--help` text each,
    sub-commands (`orch ledger rebuild`) after their group."""
    import typer

    from orchestrator.cli.main import app

    sections = []

    def walk(command, ctx) -> None:  # click's Command and Context, as typer vendors them
        sections.append(f"### `{ctx.command_path}`\n\n```\n{command.get_help(ctx)}\n```\n")
        for name in getattr(command, "list_commands", lambda _: [])(ctx):
            sub = command.get_command(ctx, name)
            walk(sub, sub.context_class(sub, info_name=name, parent=ctx))

    root = typer.main.get_command(app)
    walk(root, root.context_class(root, info_name="orch"))
    return "\n".join(sections)


def main() -> None:
    for ref in REFERENCES:
        page = ROOT / ref.page
        text = page.read_text()
        start, end = marked(ref.name)
        i, j = text.index(start) + len(start), text.index(end)
        page.write_text(text[:i] + generated(ref) + text[j:])


if __name__ == "__main__":
    if sys.argv[1:] == ["--cli-help"]:
        sys.stdout.write(cli_help())
    else:
        main()
