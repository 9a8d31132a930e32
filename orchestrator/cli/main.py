"""`orch`: run sweeps on this machine and look at them.

Exit codes: 0 done; 1 a sweep where no trial finished, or a sweep busy elsewhere, or a launcher
that cannot run here (no Docker engine, no GPU runtime, a failed build, a pinned image missing;
nothing launched), or a full or read-only disk under the ledger; 2 an invalid spec (nothing
launched), or a corrupt or lost ledger to repair first; 130 stopped by Ctrl-C or `orch stop`;
143 stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from orchestrator.cli import ledger as cli_ledger
from orchestrator.cli import report as cli_report
from orchestrator.cli import wandb as cli_wandb
from orchestrator.report import gates
from orchestrator.report import results as results_mod
from orchestrator.report import status as status_mod
from orchestrator.report import tables
from orchestrator.launch.protocol import LauncherError
from orchestrator.ledger import Ledger, alive, orch_home
from orchestrator.ledger_file import LedgerError, describe, storage_fault
from orchestrator.spec.plan import Plan, build_plan
from orchestrator.run.estimate import PROBE_BUDGET, estimate, points_to_run
from orchestrator.run.progress import Progress, stage_line
from orchestrator.spec.rejections import skipped
from orchestrator.run.loop import RunLoop, SweepBusy
from orchestrator.run.slots import Slot, sweep_slots
from orchestrator.spec.model import SpecError, SweepSpec
from orchestrator.cli.terminal import err, fail, interrupt_choice, out, say, show, spec_errors
from orchestrator.states import SweepState

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sweep orchestrator: validate, run, resume and compare trainer sweeps.")

SetOpt = typer.Option(None, "--set", help="Override a base config key for every trial: "
                                          "key.path=value (repeatable).")
DataOpt = typer.Option(None, "--data", help="Titles file (CSV with a title column, JSONL, text) "
                                            "instead of the Hugging Face dataset.")
BackendOpt = typer.Option(None, "--backend", help="`local` or `wandb` (default: the spec's "
                                                  "tracking.backend).")


def _plan(spec: Path, sets: list[str] | None, data: Path | None,
          max_trials: int | None = None, name: str | None = None) -> Plan:
    try:
        return build_plan(spec, list(sets or []), data, max_trials, name)
    except SpecError as e:
        spec_errors(e)
        raise typer.Exit(2) from None


def _say_notes(plan: Plan) -> None:
    """What validation found that does not stop the spec: its notes and any skipped points."""
    for note in plan.notes:
        err.print(f"note: {note}", highlight=False)
    if plan.rejected and plan.rejected.count:
        say(skipped(plan.rejected))


def _ledger(readonly: bool = False) -> Ledger:
    return Ledger(orch_home(), readonly)


def _known_sweep(ledger: Ledger, name: str) -> dict:
    row = ledger.sweep(name)
    if row is None:
        names = ", ".join(s["name"] for s in ledger.sweeps()) or "none yet"
        err.print(f"error: no sweep named {name!r} in {ledger.path} (sweeps: {names})")
        raise typer.Exit(2)
    return row


@app.command()
def sweep(spec: Path = typer.Argument(..., help="Sweep spec YAML."),
          dry_run: bool = typer.Option(False, "--dry-run",
                                       help="Validate and list the trials, estimate their time "
                                            "(probing uncached shapes); run nothing."),
          no_probe: bool = typer.Option(False, "--no-probe", help="Dry run: estimate from the "
                                        "ledger and cached probes only (fast, offline)."),
          probe_budget: Optional[float] = typer.Option(
              None, "--probe-budget", min=1, metavar="SECONDS",
              help=f"Dry run: probe for up to SECONDS (default {PROBE_BUDGET:.0f}), again "
                   "where the cached probe was stopped at its budget."),
          max_trials: Optional[int] = typer.Option(None, "--max-trials", min=1,
                                                   help="Start at most N trials this time."),
          data: Optional[Path] = DataOpt, set_: Optional[list[str]] = SetOpt,
          backend: Optional[str] = BackendOpt,
          name: Optional[str] = typer.Option(
              None, "--name", help="Sweep name instead of the spec's `name`: a new sweep from "
              "the same file (e.g. one per nightly run), or that sweep resumed."),
          yes: bool = typer.Option(False, "--yes", help="Slurm: on Ctrl-C, cancel the sweep's "
                                   "jobs without asking."),
          detach: bool = typer.Option(False, "--detach", help="Slurm: on Ctrl-C, leave the "
                                      "sweep's jobs running without asking (a later `orch "
                                      "sweep` adopts them).")) -> None:
    """Validate a spec, create or resume its sweep, run it, and print the comparison table."""
    if yes and detach:
        err.print("error: --yes cancels the jobs on Ctrl-C, --detach leaves them: pick one")
        raise typer.Exit(2)
    stage_line(err, f"validating {spec}…")
    plan = _plan(spec, set_, data, max_trials, name)
    try:
        _say_notes(plan)
        on_wandb = (backend or plan.spec.tracking.backend) == "wandb"
        ledger = _ledger(readonly=dry_run and not on_wandb)
        if on_wandb:
            cli_wandb.sweep_on_wandb(plan, ledger, dry_run, max_trials)
            return
        if dry_run:
            _dry_run(plan, ledger, max_trials, not no_probe, probe_budget)
            return
        progress = Progress(plan.spec.name, plan.varied, plan.spec.metric.name, err=err)
        slots = sweep_slots(plan.spec)
        # Ledger history and cached probes only: no probe delays a real sweep, whose first
        # finished trial measures the time anyway (the live ETA then uses it).
        guess = estimate(plan, ledger, slots, max_trials, probe=False)
        for text in filter(None, (guess.line(), guess.warning())):
            progress.stage(text)
        progress.estimate = guess.per_trial()
        loop = RunLoop(plan, ledger, progress, ledger.home, max_trials=max_trials,
                       slots=slots, on_interrupt=interrupt_choice(progress, yes, detach))
        started = time.time()
        try:
            code = loop.run()
        except SweepBusy as e:
            err.print(f"error: {e}")
            raise typer.Exit(1) from None
        except SpecError as e:  # the program refused the data before the first launch
            spec_errors(e)
            raise typer.Exit(2) from None
        except LauncherError as e:
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        report = results_mod.load(ledger, [plan.spec.name], per_trial=True)
        show(tables.rich_table(tables.report_grid(
            report, title=f"sweep {plan.spec.name} ({time.time() - started:.0f} s this run)")))
        again = f"orch sweep {spec}" + (f" --name {name}" if name else "")
        ended = (ledger.sweep(plan.spec.name) or {}).get("state")
        if code in (130, 143) and ended == SweepState.DETACHED:
            out.print(f"detached: its Slurm jobs run on; `{again}` adopts them, "
                      f"`orch stop {plan.spec.name}` cancels them")
        elif code in (130, 143):
            out.print(f"stopped; `{again}` resumes it")
        raise typer.Exit(code)
    finally:
        plan.close()


def _dry_run(plan: Plan, ledger: Ledger, max_trials: int | None, probe: bool,
             budget: float | None) -> None:
    spec: SweepSpec = plan.spec
    slots = sweep_slots(spec)
    out.print(f"sweep {spec.name}: {spec.method} search on {plan.base}, "
              f"{len(slots)} slot(s) ({', '.join(s.device for s in slots)})", highlight=False)
    if plan.fixed:
        out.print("fixed: " + " ".join(f"{k}={json.dumps(v)}" for k, v in plan.fixed.items()),
                  highlight=False)
    done = {t.config_hash: t for t in ledger.trials(spec.name)} if ledger.sweep(spec.name) else {}
    if plan.grid is None:
        cap = spec.run_cap
        out.print(f"{spec.method}: up to {cap or 'max-trials'} trials drawn from "
                  f"{', '.join(plan.varied) or 'the parameters'}; {len(done)} already in the "
                  f"ledger", highlight=False)
        _print_estimate(plan, ledger, slots, max_trials, probe, budget)
        return
    table = Table(title=f"{len(plan.grid)} grid trials ({len(plan.invalid)} invalid skipped)",
                  title_justify="left")
    table.add_column("#", justify="right")
    for n in plan.varied:
        table.add_column(n, overflow="fold")
    table.add_column("config", overflow="fold")
    table.add_column("ledger")
    for i, (point, h) in enumerate(plan.grid, 1):
        t = done.get(h)
        state = t.state if t else "new"
        table.add_row(str(i), *[tables.fmt_param(point.get(n), [p.get(n) for p, _ in plan.grid])
                                for n in plan.varied], h, state)
    show(table)
    todo = len(points_to_run(plan, list(done.values()), max_trials))
    out.print(f"{todo} trial(s) would run", highlight=False)
    _print_estimate(plan, ledger, slots, max_trials, probe, budget)


def _print_estimate(plan: Plan, ledger: Ledger, slots: list[Slot], max_trials: int | None,
                    probe: bool, budget: float | None) -> None:
    """The dry run's estimate line (probing uncached shapes), its notes, and the >1 day
    warning."""
    guess = estimate(plan, ledger, slots, max_trials, probe, lambda t: stage_line(err, t),
                     budget)
    out.print(guess.line(), highlight=False, soft_wrap=True)
    for note in guess.notes:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if warning := guess.warning():
        err.print(warning, highlight=False, markup=False, soft_wrap=True)


@app.command()
def validate(spec: Path = typer.Argument(..., help="Sweep spec YAML."),
             data: Optional[Path] = DataOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a spec without running anything: exit 0 when valid, 2 with the problems."""
    plan = _plan(spec, set_, data)
    try:
        _say_notes(plan)
        rejected = plan.rejected
        count = f"{len(plan.grid)} grid trials" if plan.grid is not None else \
            f"{plan.spec.method} search, run_cap {plan.spec.run_cap}"
        if rejected and (rejected.count or plan.grid is None):
            count += f"; {rejected.count} of {rejected.checked} {rejected.what} invalid"
        out.print(f"{spec}: valid ({count})", highlight=False)
    finally:
        plan.close()


@app.command("ls")
def ls() -> None:
    """The sweeps in the ledger, with their state and trial counts."""
    ledger = _ledger(readonly=True)
    table = Table(title=f"sweeps in {ledger.path}", title_justify="left")
    for col in ("sweep", "state", "trials", "spec"):
        table.add_column(col, overflow="fold")
    for s in ledger.sweeps():
        state = status_mod.sweep_state(s)  # `interrupted` if its orchestrator died
        counts = ", ".join(f"{n} {st}" for st, n in s["counts"].items()) or "none"
        table.add_row(s["name"], state, counts, s["spec_path"] or "")
    show(table)


@app.command()
def status(name: Optional[str] = typer.Argument(
               None, help="Sweep name (default: the sweep created or run last)."),
           form: str = typer.Option("table", "--format", help="table, or json for scripts: "
                                    "each trial with its state, device, attempts and the "
                                    "validation history of the attempt that counts.")) -> None:
    """The sweep's trials: state, device, step, last and best metric, attempts, run dir."""
    if form not in status_mod.FORMATS:
        err.print(f"error: --format {form}: choose one of {', '.join(status_mod.FORMATS)}")
        raise typer.Exit(2)
    ledger = _ledger(readonly=True)
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
    _known_sweep(ledger, name)
    if form == "json":
        sys.stdout.write(status_mod.status_json(ledger, name))
    else:
        show(status_mod.status_table(ledger, name))


@app.command()
def results(
    names: list[str] = typer.Argument(..., help="Sweep name(s)."),
    group_by: Optional[str] = typer.Option(
        None, "--group-by", help="Parameters that make a configuration (comma-separated); "
        "rows aggregate the other trials (mean ± std, n). `none`: one row per trial. Default: "
        "every varied parameter except train.seed and data.seed."),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="Add Δ columns against trial:N, trial:SWEEP/N, "
        "key=value,... (one row's parameters) or sweep:NAME (that sweep's best row). Grouped: "
        "Δ ± std of the per-seed differences where the trials pair by seed."),
    compare: Optional[str] = typer.Option(
        None, "--compare", metavar="OTHER_SWEEP", help="Configurations matched by their "
        "parameters, OTHER_SWEEP beside this one, with the change."),
    form: str = typer.Option("table", "--format", help="table, markdown, csv or json."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write to FILE, not stdout."),
    fail_if_worse_than: Optional[float] = typer.Option(
        None, "--fail-if-worse-than", metavar="X",
        help="Exit 1 when the best row's metric is worse than X (or nothing finished)."),
    max_regression: Optional[float] = typer.Option(
        None, "--max-regression", metavar="PCT", help="With --compare: exit 1 when the best "
        "metric is more than PCT % worse than OTHER_SWEEP's best."),
    backend: Optional[str] = typer.Option(
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
    ledger = _ledger(readonly=backend != "wandb")
    if backend == "wandb":
        names = [cli_wandb.import_wandb(ledger, n) for n in names]
    keys = None if group_by in (None, "none") else [
        k.strip() for k in group_by.split(",") if k.strip()]
    try:
        report = results_mod.load(ledger, names, keys, per_trial=group_by == "none")
        if baseline:
            results_mod.set_baseline(report, ledger, baseline)
        comp = None if compare is None else results_mod.compare(report, results_mod.load(
            ledger, [compare], report.keys if report.grouped else None,
            per_trial=not report.grouped))
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
        out_file.write_text(tables.render(grid, form), encoding="utf-8")
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


@app.command()
def plot(name: str = typer.Argument(..., help="Sweep name."),
         out_dir: Optional[Path] = typer.Option(
             None, "--out", help="Folder for the PNGs (default: ORCH_HOME/runs/SWEEP/plots).")
         ) -> None:
    """PNG plots: learning curves, the metric against each parameter, a grid heatmap."""
    from orchestrator.report import plots  # matplotlib is slow to import: this command alone

    ledger = _ledger(readonly=True)
    _known_sweep(ledger, name)
    for path in plots.plot_sweep(ledger, name, out_dir or ledger.home / "runs" / name / "plots"):
        out.print(str(path), highlight=False)


@app.command()
def stop(name: str = typer.Argument(..., help="Sweep name.")) -> None:
    """Ask a running sweep to stop (its trials get SIGTERM; `orch sweep` resumes it later)."""
    ledger = _ledger()
    row = _known_sweep(ledger, name)
    ledger.request_stop(name)
    if row["state"] == SweepState.RUNNING:
        out.print(f"asked sweep {name} (pid {row['owner_pid']}) to stop")
    else:
        out.print(f"sweep {name} is not running ({row['state']}); nothing to stop")
    if (row["spec"].get("launcher") or {}).get("type") == "docker" \
            and not alive(row["owner_pid"], row["owner_start"]):
        # No orchestrator to do it: remove what a killed one left, so nothing runs on unseen.
        from orchestrator.launch.docker.launcher import remove_containers
        from orchestrator.launch.docker.image import connect

        try:
            gone = remove_containers(connect(), name, ledger.home)
        except LauncherError as e:
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        if gone:
            out.print(f"removed {gone} container(s) its dead orchestrator left")
    if (row["spec"].get("launcher") or {}).get("type") == "slurm" \
            and not alive(row["owner_pid"], row["owner_start"]):
        # Jobs outlive a killed or detached orchestrator: cancel them here, by ledger job id.
        from orchestrator.launch.slurm.commands import SlurmError
        from orchestrator.launch.slurm.launcher import cancel_sweep

        try:
            gone = cancel_sweep(ledger, name, ledger.home)
        except SlurmError as e:
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        out.print(f"cancelled {gone} Slurm job(s) of sweep {name} that no orchestrator watched")


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
    """The spec reference as a Markdown table (the README embeds it)."""
    from orchestrator.spec.reference import spec_reference

    sys.stdout.write(spec_reference() + "\n")


# The W&B cloud path's commands live in their own module; registered last so `orch --help`
# lists the local workflow first.
app.command()(cli_wandb.agent)
app.command("sync")(cli_wandb.sync_cmd)
app.command()(cli_report.report)
app.command()(cli_report.best)
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
