"""`orch ledger rebuild | restore`: repair a lost or corrupt ledger from what is left of it.

The ledger's faults are printed as one line by `main` in cli.py; these commands are what those
lines point to.
"""

from __future__ import annotations

from pathlib import Path

import typer

from orchestrator import ledger_rebuild
from orchestrator.ledger import orch_home
from orchestrator.ledger_file import LedgerError, describe
from orchestrator.cli.terminal import out, say

app = typer.Typer(no_args_is_help=True, help="Repair the ledger: rebuild it from the run dirs, "
                                             "or put its automatic backup back.")
ForceOpt = typer.Option(False, "--force", help="Replace a ledger that is still intact (it is "
                                               "kept aside, never deleted).")


@app.command()
def rebuild(force: bool = ForceOpt) -> None:
    """Rebuild ORCH_HOME/ledger.sqlite from the run dirs (each holds its trial, events, result
    and verdict); the old file is kept aside as ledger.sqlite.broken-TIME."""
    try:
        done = ledger_rebuild.rebuild(orch_home(), force)
    except OSError as e:
        raise _fault(e) from None
    kept = f"; the old file is kept as {done.kept}" if done.kept else ""
    rerun = f", {done.rerun} without a result (pending: `orch sweep` re-runs them)" \
        if done.rerun else ""
    out.print(f"rebuilt {orch_home() / 'ledger.sqlite'}: {len(done.sweeps)} sweep(s) "
              f"({', '.join(done.sweeps)}), {done.trials} trial(s), {done.attempts} attempt(s)"
              f"{rerun}{kept}", highlight=False, soft_wrap=True)
    for run_dir in done.unreadable:
        say(f"warning: {run_dir / 'result.json'} is unreadable: that attempt's metrics come "
            "from its last validation in events.jsonl")


@app.command()
def restore(force: bool = ForceOpt) -> None:
    """Put the automatic backup (ledger.sqlite.bak, taken when each sweep ends) back in place;
    trials run since then are missing from it (`orch ledger rebuild` has them)."""
    try:
        kept = ledger_rebuild.restore(orch_home(), force)
    except OSError as e:
        raise _fault(e) from None
    out.print(f"restored {orch_home() / 'ledger.sqlite'} from its backup"
              + (f"; the old file is kept as {kept}" if kept else ""), highlight=False,
              soft_wrap=True)


def _fault(err: OSError) -> LedgerError:
    """A read-only or full ORCH_HOME met while replacing the ledger, as one line."""
    return describe(err, Path(err.filename or orch_home())) or LedgerError(str(err))
