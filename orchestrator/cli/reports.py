"""`orch ls`, `orch status`, `orch results` and `orch plot`: what the ledger holds, as tables,
CI gates and plots."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from orchestrator.cli import report as cli_report
from orchestrator.cli import wandb as cli_wandb
from orchestrator.cli.terminal import err, fail, out, show, write_out
from orchestrator.ledger import Ledger, orch_home
from orchestrator.report import compare as compare_mod
from orchestrator.report import gates
from orchestrator.report import results as results_mod
from orchestrator.report import status as status_mod
from orchestrator.report import tables
from orchestrator.spec.model import Backend

def ls() -> None:
    """The sweeps in the ledger, with their state and trial counts."""
    ledger = Ledger(orch_home(), readonly=True)
    table = Table(title=f"sweeps in {ledger.path}", title_justify="left")
    for col in ("sweep", "state", "trials", "spec"):
        table.add_column(col, overflow="fold")
    for s in ledger.sweeps():
        state = status_mod.sweep_state(s)  # `interrupted` if its orchestrator died
        counts = ", ".join(f"{n} {st}" for st, n in s["counts"].items()) or "none"
        table.add_row(s["name"], state, counts, s["spec_path"] or "")
    show(table)


def status(name: Optional[str] = typer.Argument(
               None, help="Sweep name (default: the sweep created or run last)."),
           form: str = typer.Option("table", "--format", help="table, or json for scripts: "
                                    "each trial with its state, device, attempts and the "
                                    "validation history of the attempt that counts.")) -> None:
    """The sweep's trials: state, device, step, last and best metric, attempts, run dir."""
    if form not in status_mod.FORMATS:
        err.print(f"error: --format {form}: choose one of {', '.join(status_mod.FORMATS)}")
        raise typer.Exit(2)
    ledger = Ledger(orch_home(), readonly=True)
    if name is None:
        name = status_mod.latest_sweep(ledger)
        if name is None:
            err.print(f"no sweeps in {ledger.path} yet; `orch sweep SPEC` starts one",
                      highlight=False)
            return
        others = [s["name"] for s in ledger.sweeps() if s["name"] != name]
        if others:
            err.print(f"the latest sweep; also: {', '.join(others)} (`orch status NAME`)",
                      highlight=False)
    known_sweep(ledger, name)
    if form == "json":
        sys.stdout.write(status_mod.status_json(ledger, name))
    else:
        show(status_mod.status_table(ledger, name))


def results(
    names: list[str] = typer.Argument(..., help="Sweep name(s)."),
    group_by: Optional[str] = typer.Option(
        None, "--group-by", help="Parameters that make a configuration (comma-separated); "
        "rows aggregate the other trials (mean ± std, n). `none`: one row per trial. Default: "
        "every varied parameter except the seeds the program declares (`PROGRAM describe`)."),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="Add Δ columns against trial:N, trial:SWEEP/N, "
        "key=value,... (one row's parameters) or sweep:NAME (that sweep's best row). Grouped: "
        "Δ ± std of the per-seed differences where the trials pair by seed."),
    compare: Optional[str] = typer.Option(
        None, "--compare", metavar="OTHER_SWEEP", help="Configurations matched by every "
        "parameter either sweep varies (seeds averaged; or by --group-by), OTHER_SWEEP beside "
        "this one, with the change."),
    form: str = typer.Option("table", "--format", help="table, markdown, csv or json."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write to FILE, not stdout."),
    fail_if_worse_than: Optional[float] = typer.Option(
        None, "--fail-if-worse-than", metavar="X",
        help="Exit 1 when the best row's metric is worse than X (or nothing finished)."),
    max_regression: Optional[float] = typer.Option(
        None, "--max-regression", metavar="PCT", help="With --compare: exit 1 when the best "
        "metric is more than PCT % worse than OTHER_SWEEP's best."),
    backend: Optional[Backend] = typer.Option(
        None, "--backend", help="`wandb`: first read each SWEEP (ENTITY/PROJECT/SWEEP_ID or a "
        "ledger name) from the W&B API into the ledger."),
    importance: bool = typer.Option(False, "--importance", help="Also print each parameter's "
                                    "importance (fANOVA) and correlation sign, on stderr."),
) -> None:
    """The comparison table: rows sorted by the sweep's metric, best marked; CI gates."""
    if form not in tables.FORMATS:
        err.print(f"error: --format {form}: choose one of {', '.join(tables.FORMATS)}")
        raise typer.Exit(2)
    if (max_regression is not None and compare is None) or (compare and len(names) > 1):
        err.print("error: --max-regression needs --compare, and --compare one SWEEP")
        raise typer.Exit(2)
    for flag, value in (("--fail-if-worse-than", fail_if_worse_than),
                        ("--max-regression", max_regression)):
        if value is not None and not math.isfinite(value):  # a nan gate passes everything
            fail(f"{flag} {value}: give a finite number")
            raise typer.Exit(2)
    ledger = Ledger(orch_home(), readonly=backend != "wandb")
    if backend == "wandb":
        names = [cli_wandb.import_wandb(ledger, n) for n in names]
    keys = None if group_by in (None, "none") else [
        k.strip() for k in group_by.split(",") if k.strip()]
    try:
        report = results_mod.load(ledger, names, keys, per_trial=group_by == "none")
        if baseline:
            compare_mod.set_baseline(report, ledger, baseline)
        comp = None if compare is None else compare_mod.compare_sweeps(
            ledger, report, compare, keys)
    except results_mod.ResultsError as e:
        err.print(f"error: {e}", highlight=False)
        raise typer.Exit(2) from None
    grid = tables.compare_grid(comp) if comp else tables.report_grid(report)
    failures = [m for m in (
        gates.worse_than(report, fail_if_worse_than)
        if fail_if_worse_than is not None else None,
        gates.regression(comp, max_regression)
        if comp is not None and max_regression is not None else None) if m]
    if out_file is not None:
        write_out(out_file, tables.render(grid, form))
        err.print(f"wrote {out_file}", highlight=False)
    elif form == "table":
        show(tables.rich_table(grid))
    else:
        sys.stdout.write(tables.render(grid, form))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:  # GitHub Actions shows this file on the run's page
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(tables.markdown(grid) + "".join(f"\n**gate failed:** {m}\n"
                                                     for m in failures) + "\n")
    if importance:
        cli_report.print_importance(ledger, names, report)
    for message in failures:
        err.print(f"[bold red]gate failed:[/] {message}", highlight=False)
    if failures:
        raise typer.Exit(1)


def plot(name: str = typer.Argument(..., help="Sweep name."),
         out_dir: Optional[Path] = typer.Option(
             None, "--out", help="Folder for the PNGs (default: ORCH_HOME/runs/SWEEP/plots).")
         ) -> None:
    """PNG plots: learning curves, the metric against each parameter, a grid heatmap."""
    from orchestrator.report import plots  # matplotlib is slow to import: this command alone

    ledger = Ledger(orch_home(), readonly=True)
    known_sweep(ledger, name)
    folder = out_dir or ledger.home / "runs" / name / "plots"
    try:
        paths = plots.plot_sweep(ledger, name, folder)
    except OSError as e:
        fail(f"--out {folder}: cannot write the plots there ({e.strerror or e}); give a "
             "folder, new or existing")
        raise typer.Exit(2) from None
    for path in paths:
        out.print(str(path), highlight=False)


def known_sweep(ledger: Ledger, name: str) -> dict:
    """The ledger's row of sweep `name`; exit 2 naming the sweeps it has when there is none."""
    row = ledger.sweep(name)
    if row is None:
        names = ", ".join(s["name"] for s in ledger.sweeps()) or "none yet"
        err.print(f"error: no sweep named {name!r} in {ledger.path} (sweeps: {names})")
        raise typer.Exit(2)
    return row
