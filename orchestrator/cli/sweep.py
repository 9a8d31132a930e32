"""`orch sweep`, `orch validate` and `orch stop`: a spec checked, its sweep run, stopped."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from orchestrator.cli import wandb as cli_wandb
from orchestrator.cli.reports import known_sweep
from orchestrator.cli.terminal import err, interrupt_choice, out, say, show, spec_errors
from orchestrator.launch.protocol import LauncherError
from orchestrator.ledger import Ledger, Trial, orch_home
from orchestrator.process import alive
from orchestrator.report import results as results_mod
from orchestrator.report import tables
from orchestrator.report.status import sweep_state
from orchestrator.run.estimate import PROBE_BUDGET, estimate, points_to_run, reused_count
from orchestrator.run.reuse import reuse_lookup
from orchestrator.run.loop import RunLoop, SweepBusy
from orchestrator.run.progress import Progress, stage_line
from orchestrator.run.slots import Slot, sweep_slots
from orchestrator.spec.document import SpecError
from orchestrator.spec.model import Backend, SweepSpec
from orchestrator.spec.plan import Plan, build_plan
from orchestrator.spec.rejections import skipped
from orchestrator.states import SweepState, TrialState

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
          backend: Optional[Backend] = BackendOpt,
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
        ledger = Ledger(orch_home(), readonly=dry_run and not on_wandb)
        clash = _another_sweeps_name(plan, ledger)
        if clash:
            spec_errors(SpecError([clash]))
            raise typer.Exit(2)
        if on_wandb:
            if plan.spec.reuse:
                err.print("note: reuse: W&B agents train every trial; reuse applies to the "
                          "local backend only", highlight=False)
            cli_wandb.sweep_on_wandb(plan, ledger, dry_run, max_trials)
            return
        recorded = ledger.trials(plan.spec.name)
        moved = _settings_changed(plan, recorded)
        if moved:
            spec_errors(SpecError([moved]))
            raise typer.Exit(2)
        _note_trials_outside_the_grid(plan, recorded)
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
        # The same settings again (a resume without --data would read another data source).
        again = shlex.join(["orch", "sweep", str(spec), *(["--name", name] if name else []),
                            *(["--data", str(data)] if data else []),
                            *(a for s in set_ or [] for a in ("--set", s)),
                            *(["--backend", backend] if backend else [])])
        ended = (ledger.sweep(plan.spec.name) or {}).get("state")
        if code in (130, 143) and ended == SweepState.DETACHED:
            out.print(f"detached: its Slurm jobs run on; `{again}` adopts them, "
                      f"`orch stop {plan.spec.name}` cancels them")
        elif code in (130, 143):
            out.print(f"stopped; `{again}` resumes it")
        raise typer.Exit(code)
    finally:
        plan.close()


def _another_sweeps_name(plan: Plan, ledger: Ledger) -> str | None:
    """Why this spec cannot run as the sweep of its name the ledger already holds: another
    program or metric, whose trials this spec's would join (results ranked together, the best
    picked across both). An edited grid or base of the same program resumes as usual."""
    name = plan.spec.name
    known = ledger.sweep(name)
    if known is None:
        return None
    was = known["spec"]
    now = {"program": plan.spec.program, "metric": plan.spec.metric.name}
    before = {"program": was.get("program"), "metric": (was.get("metric") or {}).get("name")}
    differ = [k for k in now if before[k] is not None and before[k] != now[k]]
    if not differ:
        return None
    return (f"{plan.doc.path}: sweep {name} is already in the ledger (from {known['spec_path']}) "
            f"with another {' and '.join(differ)} ("
            + "; ".join(f"{k} {before[k]!r}, here {now[k]!r}" for k in differ)
            + f"), so this spec's trials would be ranked with its trials; run it under another "
            f"name (`--name {name}-2`); nothing was run")


def _settings_changed(plan: Plan, recorded: list[Trial]) -> str | None:
    """Why this run cannot resume its sweep: the settings every trial shares (base,
    overrides, --set, --data) changed, so the recorded trials' parameters now make other
    configurations. Resuming would run pending trials under their old config hash and take the
    new configurations of finished points for done. A grid point's hash under these settings
    is the plan's already; the program keys only the other trials' parameters."""
    in_grid = {_point_key(point): h for point, h in plan.grid or []}
    trials = [t for t in recorded if t.state != TrialState.INVALID and t.config_hash]
    others = [t for t in trials if _point_key(t.params) not in in_grid]
    verdicts = dict(zip((t.id for t in others),
                        plan.validator.check([plan.resolved(t.params) for t in others])))
    for t in trials:
        verdict = verdicts.get(t.id)
        if verdict is None:  # a grid point
            now = in_grid[_point_key(t.params)]
        else:
            now = verdict.get("config_hash") if verdict.get("ok") else None
        if now and now != t.config_hash:
            name = plan.spec.name
            return (f"{plan.doc.path}: the settings all trials share (base, overrides, --set, "
                    f"--data) differ from those sweep {name} ran with: its trial {t.number} "
                    f"({t.point}) is configuration {t.config_hash}, and with these settings the "
                    f"same parameters make {now}. Resuming would mix the two; run these "
                    f"settings under another name (`--name {name}-2`), or resume with the "
                    "sweep's own; nothing was run")
    return None


def _point_key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def _note_trials_outside_the_grid(plan: Plan, recorded: list[Trial]) -> None:
    """An edited grid resumes its sweep: say that the trials of points the spec no longer has
    stay in the sweep (its table, `orch best`)."""
    if plan.grid is None:
        return
    grid = {h for _, h in plan.grid}
    outside = [t for t in recorded if t.config_hash not in grid]
    if outside:
        say(f"note: sweep {plan.spec.name} holds {len(outside)} trial(s) of points this "
            f"spec's grid no longer has (an edited grid): they stay in its table and `orch "
            f"best`; `--name NEW` starts a separate sweep")


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
    reuse_of = reuse_lookup(plan, ledger)
    for i, (point, h) in enumerate(plan.grid, 1):
        t = done.get(h)
        found = reuse_of(h) if t is None else None
        state = t.state if t else f"reuse {found.origin}" if found else "new"
        table.add_row(str(i), *[tables.fmt_param(point.get(n), [p.get(n) for p, _ in plan.grid])
                                for n in plan.varied], h, state)
    show(table)
    todo = len(points_to_run(plan, list(done.values()), max_trials, reuse_of))
    reused = reused_count(plan, list(done.values()), reuse_of)
    out.print(f"{todo} trial(s) would run"
              + (f"; {reused} reused from other sweeps, not run" if reused else ""),
              highlight=False)
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


def stop(name: str = typer.Argument(..., help="Sweep name.")) -> None:
    """Ask a running sweep to stop (its trials get SIGTERM; `orch sweep` resumes it later)."""
    ledger = Ledger(orch_home())
    row = known_sweep(ledger, name)
    ledger.request_stop(name)
    state = sweep_state(row)
    if state == SweepState.RUNNING:
        out.print(f"asked sweep {name} (pid {row['owner_pid']}) to stop")
    elif state == SweepState.INTERRUPTED:  # its orchestrator was killed: nothing to ask
        out.print(f"sweep {name} is not running: its orchestrator (pid {row['owner_pid']}) is "
                  f"gone; `orch sweep` resumes it")
    else:
        out.print(f"sweep {name} is not running ({state}); nothing to stop")
    owner_alive = alive(row["owner_pid"], row["owner_start"])
    if (row["spec"].get("launcher") or {}).get("type") == "docker" and not owner_alive:
        # No orchestrator to do it: remove what a killed one left, so nothing runs on unseen.
        from orchestrator.launch.docker.engine import remove_containers
        from orchestrator.launch.docker.image import connect

        try:
            gone = remove_containers(connect(), name, ledger.home)
        except LauncherError as e:
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        if gone:
            out.print(f"removed {gone} container(s) its dead orchestrator left")
    if (row["spec"].get("launcher") or {}).get("type") == "slurm" and not owner_alive:
        # Jobs outlive a killed or detached orchestrator: cancel them here, by ledger job id.
        from orchestrator.launch.slurm.commands import SlurmError
        from orchestrator.launch.slurm.launcher import cancel_sweep

        try:
            gone = cancel_sweep(ledger, name, ledger.home)
        except SlurmError as e:
            err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        out.print(f"cancelled {gone} Slurm job(s) of sweep {name} that no orchestrator watched")
