"""`orch report` (an offline HTML page of sweeps), `orch best` (the winner as a runnable config
or spec) and the parameter importance `orch results --importance` prints.

Registered on the main app by `orchestrator.cli.main`. plotly, optuna and scikit-learn are
imported by these commands alone, so the other commands start as fast as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml

from orchestrator.cli.terminal import err, fail, say, write_out
from orchestrator.ledger import Ledger, orch_home
from orchestrator.report import results as results_mod
from orchestrator.report.results import Report, ResultsError


def _read_ledger(names: list[str]) -> Ledger:
    """The ledger, read-only, with every sweep of `names` in it (else exit 2)."""
    ledger = Ledger(orch_home(), readonly=True)
    for name in names:
        if ledger.sweep(name) is None:
            known = ", ".join(s["name"] for s in ledger.sweeps()) or "none yet"
            fail(f"no sweep named {name!r} in {ledger.path} (sweeps: {known})")
            raise typer.Exit(2)
    return ledger


def report(names: list[str] = typer.Argument(..., help="Sweep name(s)."),
           out_file: Path = typer.Option(Path("report.html"), "--out",
                                         help="The HTML file to write."),
           baseline: Optional[str] = typer.Option(
               None, "--baseline", help="Δ columns in the table, as `orch results --baseline`."),
           ) -> None:
    """One self-contained HTML page (works offline): sortable table, curves, parallel
    coordinates, parameter importance, marginal effects, the best config, every trial."""
    from orchestrator.report import html

    ledger = _read_ledger(names)
    try:
        page = html.render(ledger, names, baseline)
    except ResultsError as e:
        fail(str(e))
        raise typer.Exit(2) from None
    write_out(out_file, page)
    say(f"wrote {out_file} ({out_file.stat().st_size / 1e6:.1f} MB)")


def best(name: str = typer.Argument(..., help="Sweep name."),
         out_file: Optional[Path] = typer.Option(
             None, "--out", help="Write to FILE (default: stdout; with --as-spec, "
             "SWEEP-best-seeds.yaml)."),
         as_spec: bool = typer.Option(False, "--as-spec", help="Write a sweep spec that "
                                      "re-runs the best config over --seeds seeds (the "
                                      "program's first declared seed key: train.seed for the "
                                      "trainer); its config goes beside it as "
                                      "SPEC.config.yaml."),
         seeds: int = typer.Option(3, "--seeds", min=1, help="With --as-spec: how many seeds, "
                                   "counting up from the best trial's own.")) -> None:
    """The best finished trial's full trainer config: `python -m trainer --config FILE` trains
    it unchanged (the same config hash, which this command checks with the program)."""
    from orchestrator.report import best as best_mod

    ledger = _read_ledger([name])
    try:
        win = best_mod.winner(ledger, name)
    except ResultsError as e:
        fail(str(e))
        raise typer.Exit(2) from None
    text = best_mod.config_yaml(win, best_mod.program_written(ledger, name))
    if as_spec:
        spec_file = out_file or Path(f"{name}-best-seeds.yaml")
        config_file = spec_file.with_name(spec_file.stem + ".config.yaml")
        try:
            spec = best_mod.seeds_spec(ledger, win, config_file.name, seeds)
        except ResultsError as e:
            fail(str(e))
            raise typer.Exit(2) from None
        write_out(config_file, text)
        write_out(spec_file, yaml.safe_dump(spec, sort_keys=False))
        checked = config_file
    elif out_file is None:
        typer.echo(text, nl=False)
        return
    else:
        write_out(out_file, text)
        checked = out_file
    problem = best_mod.check(best_mod.program_of(ledger, name), checked.resolve(),
                             win.trial.config_hash)
    if problem:
        fail(problem)
        raise typer.Exit(1)
    say(f"trial {win.trial.number} of {name} ({win.metric} {win.value:.6g}): config hash "
        f"{win.trial.config_hash} checked with the program")
    for path in ([spec_file, config_file] if as_spec else [checked]):
        say(f"wrote {path}")


def print_importance(ledger: Ledger, names: list[str], report: Report) -> None:
    """`orch results --importance`: fANOVA importances and correlation signs, on stderr
    after the table (stdout keeps the table alone, for --format csv/json pipes)."""
    from orchestrator.report import importance

    trials = [t for n in names for t in ledger.trials(n)]
    keys = results_mod.load(ledger, names).keys  # the varied parameters less the seeds
    imp = importance.compute(trials, keys, report.metric, report.goal)
    for line in importance.lines(imp):
        err.print(line, highlight=False, markup=False, soft_wrap=True)
