"""The comparison table at the end of a sweep: one row per trial, best first.

Numbers come from each trial's result.json (`final`), or from its last validation event when a
trial ended without one. A number that does not exist is shown as missing, never as 0.
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from orchestrator.contract import finite
from orchestrator.ledger import Trial

COLUMNS = ("val_loss", "val_coverage", "val_bpb")


def rows(trials: list[Trial], varied: list[str], metric: str, goal: str) -> list[dict[str, Any]]:
    """One dict per trial (invalid points left out): finished ones by `metric`, then the rest."""
    out = []
    for t in trials:
        if t.state == "invalid":
            continue
        final = t.final or {}
        row: dict[str, Any] = {"trial": t.number, **{n: t.params.get(n) for n in varied}}
        for name in dict.fromkeys([*COLUMNS, metric]):
            row[name] = finite(final.get(name))
        row["state"] = t.state
        row["reason"] = t.reason or ""
        row["steps"] = t.step
        out.append(row)
    sign = 1 if goal == "minimize" else -1

    def key(r: dict[str, Any]) -> tuple[bool, bool, float, int]:
        # Finished trials first: a diverged or stopped trial's partial number is not comparable.
        v = r.get(metric)
        return (r["state"] != "finished", v is None, sign * v if v is not None else math.inf,
                r["trial"])

    return sorted(out, key=key)


def table(trials: list[Trial], varied: list[str], metric: str, goal: str,
          title: str | None = None) -> Table:
    """The rich table of `rows`."""
    data = rows(trials, varied, metric, goal)
    t = Table(title=title, title_justify="left")
    t.add_column("trial", justify="right")
    for n in varied:
        t.add_column(n)
    metrics = list(dict.fromkeys([*COLUMNS, metric]))
    for m in metrics:
        t.add_column("coverage" if m == "val_coverage" else m, justify="right")
    t.add_column("state", no_wrap=True, min_width=8)
    t.add_column("note", overflow="fold", max_width=50)
    for r in data:
        cells = [str(r["trial"]), *[_cell(r[n]) for n in varied]]
        for m in metrics:
            v = r[m]
            cells.append("—" if v is None else (f"{v:.1%}" if m == "val_coverage" else
                                                f"{v:.4f}"))
        note = r["reason"] if r["state"] != "finished" else ""
        cells += [r["state"], note]
        t.add_row(*cells)
    return t


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
