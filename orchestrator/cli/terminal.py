"""The terminal `orch` talks to: one console for results (stdout), one for messages (stderr),
tables printed whole on either a terminal or a pipe, and the question asked there on Ctrl-C."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestrator.run.progress import Progress
from orchestrator.spec.document import SpecError

# Logs and CI are not terminals: give lines room instead of rich's 80-column default
# (tables take the width they need, `show`).
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)


def show(table: Table, console: Console = out) -> None:
    """A table, never cut: in a pipe or a CI log at the full width it needs; on a terminal
    squeezed to the window, or, when even its narrowest form is wider, at that width with the
    lines left for the terminal to wrap (rich would crop them, losing columns)."""
    need = console.measure(table, options=console.options.update_width(10_000))  # unclamped
    width = need.maximum if not console.is_terminal else max(console.width, need.minimum)
    if width == console.width:
        console.print(table)
        return
    # Console.print never renders wider than its console: a console of the width needed.
    Console(file=console.file, width=width, force_terminal=console.is_terminal,
            color_system=console.color_system, no_color=console.no_color).print(
        table, crop=False)


def say(message: str) -> None:
    """A progress or status message, verbatim, on stderr."""
    err.print(message, highlight=False, markup=False, soft_wrap=True)


def fail(message: str) -> None:
    """An error line, verbatim, on stderr."""
    err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)


def write_out(path: Path, text: str) -> None:
    """Write an --out file; a path that cannot be written (a folder, a missing folder, no
    permission) is bad input: one line and exit 2, no traceback."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        fail(f"--out {path}: cannot write it ({e.strerror or e}); give a file path in an "
             "existing folder")
        raise typer.Exit(2) from None


def spec_errors(e: SpecError) -> None:
    """Every problem of a spec, one paragraph each."""
    for paragraph in e.paragraphs:
        # escaped: a paragraph quotes values such as [null, 128], which rich reads as markup
        err.print(f"[bold red]error:[/] {escape(paragraph)}", highlight=False, soft_wrap=True)


def interrupt_choice(progress: Progress, yes: bool, detach: bool) -> Callable[[int], bool]:
    """Ctrl-C with Slurm jobs in flight: True leaves them running. --detach and --yes decide
    for scripts; on a terminal the user is asked; anywhere else they are cancelled."""
    def choose(jobs: int) -> bool:
        if yes or detach or not sys.stdin.isatty():
            return detach
        progress.stop()  # the live table would draw over the question
        try:
            answer = input(f"{jobs} Slurm job(s) in flight: [c]ancel them or [l]eave them "
                           "running (a later `orch sweep` adopts them)? [c/l] ")
        except EOFError:
            answer = "c"
        progress.start()
        return answer.strip().lower().startswith("l")

    return choose
