"""`orch`: run sweeps on this machine and look at them.

This module is the app: it registers the commands (a sweep's in cli/sweep.py, the reports in
cli/reports.py, the W&B cloud path's in cli/wandb.py, `orch ledger` in cli/ledger.py), holds
the few that stand alone (build, schema, docs) and turns a ledger fault into one line.

Exit codes: 0 done; 1 a sweep where no trial finished, or a sweep busy elsewhere, or a launcher
that cannot run here (no Docker engine, no GPU runtime, a failed build, a pinned image missing;
nothing launched), or a full or read-only disk under the ledger; 2 an invalid spec (nothing
launched), or a corrupt or lost ledger to repair first; 130 stopped by Ctrl-C or `orch stop`;
143 stopped by SIGTERM.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli import ledger as cli_ledger
from orchestrator.cli import report as cli_report
from orchestrator.cli import reports, sweep
from orchestrator.cli import wandb as cli_wandb
from orchestrator.cli.terminal import err, fail
from orchestrator.launch.protocol import LauncherError
from orchestrator.ledger import orch_home
from orchestrator.ledger_file import LedgerError, describe, storage_fault
from orchestrator.spec.model import SweepSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sweep orchestrator: validate, run, resume and compare trainer sweeps.")

# Registered in the order `orch --help` lists them.
app.command()(sweep.sweep)
app.command()(sweep.validate)
app.command("ls")(reports.ls)
app.command()(reports.status)
app.command()(reports.results)
app.command()(reports.plot)
app.command()(sweep.stop)
app.command()(cli_report.report)
app.command()(cli_report.best)


@app.command()
def build(base_image: Optional[str] = typer.Option(
              None, "--base-image", help="BASE_IMAGE build argument (default: the Dockerfile's)."),
          tag: Optional[str] = typer.Option(
              None, "--tag", help="Image tag (default: orch-trainer:<hash of the context>; "
                                  "an existing one is reused, never rebuilt)."),
          context: Optional[Path] = typer.Option(
              None, "--context", help="Directory with the Dockerfile (default: this repository)."),
          network: Optional[str] = typer.Option(
              None, "--network", help="Network of the RUN steps, e.g. `none` for an offline "
                                      "build.")) -> None:
    """Build the trainer image (the log streams live) and print its tag."""
    from orchestrator.launch.docker.image import connect, ensure_image

    def echo(line: str) -> None:
        err.print(line, highlight=False, markup=False, soft_wrap=True)

    try:
        image, built = ensure_image(connect(), context=context, tag=tag, base_image=base_image,
                                    network=network, echo=echo)
    except LauncherError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if not built:
        err.print(f"{image} is up to date (the context is unchanged)", highlight=False)
    sys.stdout.write(image + "\n")  # alone on stdout, for scripts


@app.command()
def schema() -> None:
    """The JSON Schema of a sweep spec, for editors."""
    sys.stdout.write(json.dumps(SweepSpec.model_json_schema(), indent=2) + "\n")


@app.command()
def docs() -> None:
    """The spec reference as a Markdown table (docs/sweeps.md embeds it)."""
    from orchestrator.spec.reference import spec_reference

    sys.stdout.write(spec_reference() + "\n")


# The W&B cloud path's commands live in their own module; registered last so `orch --help`
# lists the local workflow first.
app.command()(cli_wandb.agent)
app.command("sync")(cli_wandb.sync_cmd)
app.add_typer(cli_ledger.app, name="ledger")


def main() -> None:
    """`orch`: the app, with a fault of the ledger file as one line instead of a traceback."""
    try:
        app(prog_name="orch")
    except LedgerError as e:
        fail(str(e))
        sys.exit(e.code)
    except (sqlite3.DatabaseError, OSError) as e:  # a corrupt page met reading rows, a full disk
        fault = storage_fault(e) if isinstance(e, OSError) else \
            describe(e, orch_home() / "ledger.sqlite", writing=False)
        if fault is None:
            raise
        fail(str(fault))
        sys.exit(fault.code)
