"""`orch`: run sweeps on this machine and look at them.

Exit codes: 0 done; 1 a sweep where no trial finished, or a sweep busy elsewhere; 2 an invalid
spec (nothing launched); 130 stopped by Ctrl-C or `orch stop`; 143 stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from orchestrator import results as results_mod
from orchestrator.ledger import Ledger, iter_states, orch_home
from orchestrator.plan import Plan, build_plan
from orchestrator.progress import Progress
from orchestrator.scheduler import Scheduler, SweepBusy, make_slots
from orchestrator.spec import SpecError, SweepSpec

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sweep orchestrator: validate, run, resume and compare trainer sweeps.")
# Logs and CI are not terminals: give tables room instead of rich's 80-column default.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)

SetOpt = typer.Option(None, "--set", help="Override a base config key for every trial: "
                                          "key.path=value (repeatable).")
DataOpt = typer.Option(None, "--data", help="Titles file (CSV with a title column, JSONL, text) "
                                            "instead of the Hugging Face dataset.")


def _plan(spec: Path, sets: list[str] | None, data: Path | None,
          max_trials: int | None = None) -> Plan:
    try:
        return build_plan(spec, list(sets or []), data, max_trials)
    except SpecError as e:
        for paragraph in e.paragraphs:
            err.print(f"[bold red]error:[/] {paragraph}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _ledger() -> Ledger:
    return Ledger(orch_home())


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
                                       help="Validate and list the trials; run nothing."),
          max_trials: Optional[int] = typer.Option(None, "--max-trials", min=1,
                                                   help="Start at most N trials this time."),
          data: Optional[Path] = DataOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Validate a spec, create or resume its sweep, run it, and print the comparison table."""
    plan = _plan(spec, set_, data, max_trials)
    try:
        for note in plan.notes:
            err.print(f"note: {note}", highlight=False)
        for point, reason in plan.invalid:
            err.print(f"[yellow]skipped invalid grid point[/] {json.dumps(point)}: {reason}",
                      highlight=False, soft_wrap=True)
        ledger = _ledger()
        if dry_run:
            _dry_run(plan, ledger)
            return
        progress = Progress(plan.spec.name, plan.varied, plan.spec.metric.name)
        sched = Scheduler(plan, ledger, progress, ledger.home, max_trials=max_trials)
        started = time.time()
        try:
            code = sched.run()
        except SweepBusy as e:
            err.print(f"error: {e}")
            raise typer.Exit(1) from None
        trials = ledger.trials(plan.spec.name)
        out.print(results_mod.table(trials, plan.varied, plan.spec.metric.name,
                                    plan.spec.metric.goal,
                                    title=f"sweep {plan.spec.name} "
                                          f"({time.time() - started:.0f} s this run)"))
        if code in (130, 143):
            out.print(f"stopped; `orch sweep {spec}` resumes it")
        raise typer.Exit(code)
    finally:
        plan.close()


def _dry_run(plan: Plan, ledger: Ledger) -> None:
    spec: SweepSpec = plan.spec
    slots = make_slots(spec.resources)
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
        return
    table = Table(title=f"{len(plan.grid)} grid trials ({len(plan.invalid)} invalid skipped)",
                  title_justify="left")
    table.add_column("#", justify="right")
    for n in plan.varied:
        table.add_column(n)
    table.add_column("config")
    table.add_column("ledger")
    todo = 0
    for i, (point, h) in enumerate(plan.grid, 1):
        t = done.get(h)
        state = t.state if t else "new"
        todo += state != "finished"
        table.add_row(str(i), *[str(point.get(n)) for n in plan.varied], h, state)
    out.print(table)
    if spec.run_cap is not None:
        todo = min(todo, max(0, spec.run_cap - len(done)))
    out.print(f"{todo} trial(s) would run", highlight=False)


@app.command()
def validate(spec: Path = typer.Argument(..., help="Sweep spec YAML."),
             data: Optional[Path] = DataOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a spec without running anything: exit 0 when valid, 2 with the problems."""
    plan = _plan(spec, set_, data)
    try:
        for point, reason in plan.invalid:
            err.print(f"[yellow]invalid grid point[/] {json.dumps(point)}: {reason}",
                      highlight=False, soft_wrap=True)
        count = f"{len(plan.grid)} grid trials" if plan.grid is not None else \
            f"{plan.spec.method} search, run_cap {plan.spec.run_cap}"
        out.print(f"{spec}: valid ({count})", highlight=False)
    finally:
        plan.close()


@app.command("ls")
def ls() -> None:
    """The sweeps in the ledger, with their state and trial counts."""
    ledger = _ledger()
    table = Table(title=f"sweeps in {ledger.path}", title_justify="left")
    for col in ("sweep", "state", "trials", "spec"):
        table.add_column(col)
    for s in ledger.sweeps():
        state = s["state"]
        if state == "running" and not s["owner_alive"]:
            state = "interrupted"  # its orchestrator died: `orch sweep` resumes it
        counts = ", ".join(f"{n} {st}" for st, n in s["counts"].items()) or "none"
        table.add_row(s["name"], state, counts, s["spec_path"] or "")
    out.print(table)


@app.command()
def status(name: str = typer.Argument(..., help="Sweep name.")) -> None:
    """The sweep's trials: state, step, last and best metric, attempts, run dir."""
    ledger = _ledger()
    row = _known_sweep(ledger, name)
    trials = ledger.trials(name)
    summary = ", ".join(f"{n} {s}" for s, n in iter_states(trials))
    table = Table(title=f"sweep {name} ({row['state']}): {summary}", title_justify="left")
    for col in ("trial", *row["varied"], "state", "step", f"last {row['metric']}",
                f"best {row['metric']}", "attempts", "exit", "run dir"):
        table.add_column(col)
    for t in trials:
        step = "—" if t.step is None else f"{t.step}/{t.max_steps or '?'}"
        table.add_row(str(t.number), *[str(t.params.get(n, "—")) for n in row["varied"]],
                      t.state, step, _num(t.last_metric), _num(t.best_metric), str(t.attempts),
                      "—" if t.exit_code is None else str(t.exit_code), t.run_dir or "—")
    out.print(table)


@app.command()
def results(name: str = typer.Argument(..., help="Sweep name.")) -> None:
    """The comparison table: one row per trial, sorted by the sweep's metric."""
    ledger = _ledger()
    row = _known_sweep(ledger, name)
    out.print(results_mod.table(ledger.trials(name), row["varied"], row["metric"], row["goal"],
                                title=f"sweep {name} ({row['state']})"))


@app.command()
def stop(name: str = typer.Argument(..., help="Sweep name.")) -> None:
    """Ask a running sweep to stop (its trials get SIGTERM; `orch sweep` resumes it later)."""
    ledger = _ledger()
    row = _known_sweep(ledger, name)
    ledger.request_stop(name)
    if row["state"] == "running":
        out.print(f"asked sweep {name} (pid {row['owner_pid']}) to stop")
    else:
        out.print(f"sweep {name} is not running ({row['state']}); nothing to stop")


@app.command()
def schema() -> None:
    """The JSON Schema of a sweep spec, for editors."""
    sys.stdout.write(json.dumps(SweepSpec.model_json_schema(), indent=2) + "\n")


@app.command()
def docs() -> None:
    """The spec reference as a Markdown table (the README embeds it)."""
    from orchestrator.specdoc import spec_reference

    sys.stdout.write(spec_reference() + "\n")


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"
