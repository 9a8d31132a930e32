"""The terminal `orch` talks to: one console for results (stdout), one for messages (stderr)."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from orchestrator.spec import SpecError

# Logs and CI are not terminals: give tables room instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)


def say(message: str) -> None:
    """A progress or status message, verbatim, on stderr."""
    err.print(message, highlight=False, markup=False, soft_wrap=True)


def fail(message: str) -> None:
    """An error line, verbatim, on stderr."""
    err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)


def spec_errors(e: SpecError) -> None:
    """Every problem of a spec, one paragraph each."""
    for paragraph in e.paragraphs:
        err.print(f"[bold red]error:[/] {paragraph}", highlight=False, soft_wrap=True)
