"""`orch status`: one sweep's trials from the ledger, as a table for people or JSON for scripts.

Both show each trial's attempt that counts (its latest): the device its program reported, its
progress and its validation history, read through `Ledger.history`.
"""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from orchestrator.contract import finite
from orchestrator.ledger import Ledger, iter_states
from orchestrator.process import alive
from orchestrator.report.tables import fmt_param
from orchestrator.states import SweepState

FORMATS = ("table", "json")


def sweep_state(row: dict[str, Any]) -> str:
    """The sweep's state; `running` under a dead orchestrator reads `interrupted` (a resume
    picks it up)."""
    if row["state"] == SweepState.RUNNING and not alive(row.get("owner_pid"),
                                                         row.get("owner_start")):
        return SweepState.INTERRUPTED
    return str(row["state"])


def latest_sweep(ledger: Ledger) -> str | None:
    """The name of the sweep created or run most recently, or None when the ledger has none."""
    rows = ledger.sweeps()
    return max(rows, key=lambda r: r.get("updated_at") or 0)["name"] if rows else None


def _value(v: Any) -> Any:
    """A metric for JSON: NaN and inf (not JSON) as null, like a missing one."""
    return finite(v) if isinstance(v, float) else v


def status_record(ledger: Ledger, name: str) -> dict[str, Any]:
    """The sweep and each trial (state, device, attempts, progress, the validation history of
    the attempt that counts) as plain JSON data."""
    row = ledger.sweep(name) or {}
    trials = []
    for t in ledger.trials(name):
        trials.append({
            "number": t.number, "params": t.params, "state": t.state, "reason": t.reason,
            "exit_code": t.exit_code, "attempts": t.attempts, "device": t.device,
            "reused_from": t.reused_from,
            "step": t.step, "max_steps": t.max_steps, "last_metric": _value(t.last_metric),
            "best_metric": _value(t.best_metric), "run_dir": t.run_dir,
            "history": [{"step": p.step, "time": p.time,
                         "metrics": {k: _value(v) for k, v in p.metrics.items()}}
                        for p in ledger.history(t)],
        })
    return {"sweep": name, "state": sweep_state(row), "metric": row["metric"],
            "goal": row["goal"], "varied": row["varied"], "trials": trials}


def status_json(ledger: Ledger, name: str) -> str:
    """`status_record` as JSON text (strict: no NaN)."""
    return json.dumps(status_record(ledger, name), indent=2, allow_nan=False) + "\n"


def status_table(ledger: Ledger, name: str) -> Table:
    """Trial, varied params, state, device, step, last and best metric, attempts, exit, run dir."""
    row = ledger.sweep(name) or {}
    trials = ledger.trials(name)
    summary = ", ".join(f"{n} {s}" for s, n in iter_states(trials))
    table = Table(title=f"sweep {name} ({sweep_state(row)}): {summary}", title_justify="left")
    for col in ("trial", *row["varied"], "state", "device", "step", f"last {row['metric']}",
                f"best {row['metric']}", "attempts", "exit", "run dir"):
        table.add_column(col, overflow="fold")
    for t in trials:
        step = "—" if t.step is None else f"{t.step}/{t.max_steps or '?'}"
        params = [fmt_param(t.params.get(n), [u.params.get(n) for u in trials])
                  for n in row["varied"]]
        state = f"{t.state} ({t.reused_note})" if t.reused_from else t.state
        table.add_row(str(t.number), *params, state, t.device or "—", step,
                      _num(t.last_metric), _num(t.best_metric), str(t.attempts),
                      "—" if t.exit_code is None else str(t.exit_code), t.run_dir or "—")
    return table


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"
