"""Rendering results: a rich table for terminals, Markdown for PRs and CI summaries, CSV, JSON.

Every format is drawn from one Grid (headers, display cells, machine records), so the formats
agree cell for cell. The output is deterministic: rows in the report's order, fixed decimals,
no timestamps, so two renderings of the same ledger diff clean.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.report.compare import Comparison
from orchestrator.report.results import Column, Report, Row, Stat, columns

MISSING = "—"
FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class Grid:
    """A table in every shape a renderer needs."""

    title: str
    headers: list[str]
    numeric: list[bool]  # right-aligned columns
    cells: list[list[str]] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)  # per row: best | dim | ""
    records: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    footer: list[str] = field(default_factory=list)


# -- cells ----------------------------------------------------------------------------------------


def fmt(kind: str, value: float | None) -> str:
    """One number as the tables show it: fixed decimals per kind, missing as '—'."""
    if value is None:
        return MISSING
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "share":
        return f"{value * 100:.1f}%"
    if kind == "step":
        return f"{value:.0f}"
    if kind == "rate":
        return f"{value:,.0f}"
    if kind == "count":
        if abs(value) >= 1e6:
            return f"{value / 1e6:.2f}M"
        return f"{value / 1e3:.1f}K" if abs(value) >= 1e3 else f"{value:.0f}"
    return f"{value:.1f}"  # seconds


def fmt_stat(col: Column, stat: Stat | None) -> str:
    """A cell: the value, or `mean ± std` over a group (std left out where it is exactly 0)."""
    if stat is None or stat.mean is None:
        return MISSING
    text = fmt(col.kind, stat.mean)
    if stat.std is not None and not (stat.std == 0 and col.kind == "count"):
        text += f" ± {fmt(col.kind, stat.std)}"
    return text


def fmt_param(value: Any, siblings: list[Any] = (), key: str | None = None) -> str:
    """A parameter value as text: strings bare, everything else as JSON (0.001, true, [1, 2]).

    A whole-section value (a dict, e.g. `model: {...}`) among dict `siblings` (the parameter's
    other values in the table) shows only the entries that differ between them, so long configs
    stay readable and distinguishable: `norm=layernorm,positions=rotary`. With `key`, the text
    names its parameter (`lr=0.001`, `model.norm=layernorm,model.positions=rotary`).
    """
    named = f"{key}=" if key else ""
    if value is None:
        return named + MISSING
    if isinstance(value, float):
        return named + _float(value, tuple(v for v in siblings if isinstance(v, float)))
    sections = [v for v in siblings if isinstance(v, dict)]  # missing ones (None) set aside
    if isinstance(value, dict) and sections:
        keys = sorted({k for v in sections for k in v})
        differ = [k for k in keys if len({json.dumps(v.get(k)) for v in sections}) > 1]
        section = f"{key}." if key else ""
        text = ",".join(f"{section}{k}={_compact(value[k])}" for k in differ if k in value)
        if text:
            return text
    return named + (value if isinstance(value, str) else json.dumps(value))


def _float(value: float, siblings: tuple[float, ...]) -> str:
    """A float to 4 significant digits (a bayes lr of 0.0024839686544256994 shows as 0.002484),
    or as many more as keep it apart from its siblings."""
    return f"{value:.{_digits(siblings)}g}"


@functools.lru_cache(maxsize=64)
def _digits(siblings: tuple[float, ...]) -> int:
    """The fewest significant digits (at least 4) that keep `siblings` apart; cached, as every
    cell of a column asks it of the same column."""
    for digits in range(4, 18):
        if len({f"{v:.{digits}g}" for v in siblings}) == len(set(siblings)):
            return digits
    return 17


def _compact(value: Any) -> str:
    """An entry of a whole-section value: floats to 4 significant digits (2.667, not
    2.6666666666666665), the rest as `fmt_param`."""
    return _float(value, ()) if isinstance(value, float) else fmt_param(value)


def _signed(value: float | None, kind: str) -> str:
    if value is None:
        return MISSING
    return f"{value:+.4f}" if kind == "loss" else f"{value:+.2f}%"


def _num(value: float | None) -> float | int | None:
    """A number for CSV/JSON: 6 decimals, integers as integers, so the output is stable."""
    if value is None:
        return None
    value = round(value, 6)
    return int(value) if value.is_integer() else value


def _verdict(change: float | None, goal: str) -> str:
    if change is None:
        return MISSING
    if change == 0:
        return "same"
    return "better" if (change < 0) == (goal == "minimize") else "worse"


# -- grids ----------------------------------------------------------------------------------------


def report_grid(report: Report, title: str | None = None) -> Grid:
    """The comparison table of a report."""
    cols = columns(report.metric, report.metrics)
    multi = len(report.sweeps) > 1
    heads = (["sweep"] if multi else []) + (["n"] if report.grouped else ["trial"])
    heads += report.keys + [c.label for c in cols]
    numeric = [False] * (multi) + [True] + [False] * len(report.keys) + [True] * len(cols)
    if report.baseline_value is not None:
        heads += ["Δ", "Δ %"]
        numeric += [True, True]
    heads += ["status", "note"]
    numeric += [False, False]
    direction = "lower is better" if report.goal == "minimize" else "higher is better"
    grid = Grid(title or f"sweep {', '.join(report.sweeps)}", heads, numeric, meta={
        "sweeps": report.sweeps, "metric": report.metric, "goal": report.goal,
        "grouped_by": report.keys if report.grouped else None,
        "baseline": None if report.baseline_value is None else {
            "label": report.baseline_label, report.metric: _num(report.baseline_value)}})
    grid.footer.append(f"{report.metric}: {direction}; ★ best finished row; missing: {MISSING}")
    if report.grouped:
        grid.footer.append(f"one row per {', '.join(report.keys) or 'sweep'}: mean ± sample "
                           f"std over its finished trials; n = finished/total")
    if report.baseline_value is not None:
        grid.footer.append(f"Δ against {report.baseline_label} "
                           f"({report.metric} {report.baseline_value:.4f})")
        if any(r.delta_std is not None for r in report.rows):
            grid.footer.append("Δ ± std: over the per-seed differences, where a row's finished "
                               "trials pair one to one with the baseline's by their other "
                               "parameters")
    for row in report.rows:
        grid.cells.append(_report_cells(report, row, cols, multi))
        grid.styles.append("best" if row.best else "" if row.finished else "dim")
        grid.records.append(_report_record(report, row, cols))
    return grid


def _report_cells(report: Report, row: Row, cols: list[Column], multi: bool) -> list[str]:
    cells = [row.sweep] if multi else []
    cells.append(f"{row.finished}/{row.total}" if report.grouped else str(row.trials[0]))
    cells += [fmt_param(row.params.get(k), [r.params.get(k) for r in report.rows])
              for k in report.keys]
    for c in cols:
        text = fmt_stat(c, row.values.get(c.key))
        cells.append(text + " ★" if row.best and c.key == report.metric else text)
    if report.baseline_value is not None:
        delta = _signed(row.delta, "loss")
        if row.delta_std is not None:
            delta += f" ± {fmt('loss', row.delta_std)}"
        cells += ["baseline", MISSING] if row.baseline else [delta, _signed(row.delta_pct, "pct")]
    cells += [row.status, row.note]
    return cells


def _report_record(report: Report, row: Row, cols: list[Column]) -> dict[str, Any]:
    rec: dict[str, Any] = {"sweep": row.sweep}
    rec["trials" if report.grouped else "trial"] = row.trials if report.grouped else row.trials[0]
    rec.update({k: row.params.get(k) for k in report.keys})
    rec.update({"status": row.status, "n": row.finished, "n_total": row.total,
                "best": row.best})
    for c in cols:
        stat = row.values.get(c.key)
        rec[c.key] = _num(stat.mean if stat else None)
        if report.grouped:
            rec[f"{c.key}_std"] = _num(stat.std if stat else None)
    if report.baseline_value is not None:
        rec.update({"baseline": row.baseline, "delta": _num(row.delta),
                    "delta_pct": _num(row.delta_pct)})
        if report.grouped:
            rec["delta_std"] = _num(row.delta_std)
    rec["reused_from"] = row.reused_from if report.grouped else next(iter(row.reused_from), None)
    rec["note"] = row.note
    return rec


def compare_grid(comp: Comparison) -> Grid:
    """Configurations of two sweeps side by side, with the change of the metric."""
    this, other = comp.this, comp.other
    m, a, b = this.metric, other.sweeps[0], this.sweeps[0]
    metric_col = columns(m, this.metrics)[0]
    heads = [*this.keys, f"{m} {a}", f"{m} {b}", "change", "change %", "verdict",
             f"status {a}", f"status {b}"]
    numeric = [False] * len(this.keys) + [True] * 4 + [False] * 3
    grid = Grid(f"{m}: {b} against {a}", heads, numeric, meta={
        "metric": m, "goal": this.goal, "this": b, "other": a,
        "grouped_by": this.keys if this.grouped else None})
    grid.footer.append(f"change = {b} − {a}; "
                       f"{'lower' if this.goal == 'minimize' else 'higher'} is better; "
                       f"configurations matched by {', '.join(this.keys) or 'nothing'}")
    for p in comp.pairs:
        ours, theirs = p.this, p.other
        grid.cells.append([
            *[fmt_param(p.params.get(k), [q.params.get(k) for q in comp.pairs])
              for k in this.keys],
            fmt_stat(metric_col, theirs.values.get(m) if theirs and theirs.finished else None),
            fmt_stat(metric_col, ours.values.get(m) if ours and ours.finished else None),
            _signed(p.change, "loss"), _signed(p.change_pct, "pct"),
            _verdict(p.change, this.goal),
            _side_status(theirs), _side_status(ours)])
        grid.styles.append("" if p.change is not None else "dim")
        rec: dict[str, Any] = dict(p.params)
        for side, r in (("other", theirs), ("this", ours)):
            stat = r.values.get(m) if r and r.finished else None
            rec.update({f"{side}_{m}": _num(stat.mean if stat else None),
                        f"{side}_n": r.finished if r else 0,
                        f"{side}_status": r.status if r else "absent",
                        f"{side}_reused_from": r.reused_from if r else []})
        rec.update({"change": _num(p.change), "change_pct": _num(p.change_pct),
                    "verdict": _verdict(p.change, this.goal)})
        grid.records.append(rec)
    return grid


def _side_status(row: Row | None) -> str:
    """A compared row's status, with where its reused trials came from."""
    if row is None:
        return "absent"
    return row.status + (f" (reused from {', '.join(row.reused_from)})" if row.reused_from
                         else "")


# -- renderers ------------------------------------------------------------------------------------


def rich_table(grid: Grid) -> Table:
    """The grid as a rich Table: best row bold green, rows without a result dimmed."""
    t = Table(title=grid.title, title_justify="left", caption="\n".join(grid.footer),
              caption_justify="left")
    for i, (head, num) in enumerate(zip(grid.headers, grid.numeric)):
        if head == "note":
            t.add_column(head, overflow="fold", max_width=50)
        else:
            # A narrow terminal squeezes headers and the note, never a number into "2.03…".
            widest = max((len(cells[i]) for cells in grid.cells), default=0)
            t.add_column(head, justify="right" if num else "left", no_wrap=True,
                         min_width=min(widest, 40), overflow="fold")
    for cells, style in zip(grid.cells, grid.styles):
        t.add_row(*cells, style={"best": "bold green", "dim": "dim"}.get(style, ""))
    return t


def plain_text(grid: Grid) -> str:
    """The rich table as plain text (no colour), for --out with --format table: at the full
    width it needs, so no column is cut."""
    table = rich_table(grid)
    buf = io.StringIO()
    width = Console(file=buf, width=10_000).measure(table).maximum  # unclamped by a terminal
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return buf.getvalue()


def markdown(grid: Grid) -> str:
    """A GitHub-flavoured Markdown table with its title and notes."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"### {esc(grid.title)}", ""]
    lines.append("| " + " | ".join(esc(h) for h in grid.headers) + " |")
    lines.append("|" + "|".join("---:" if n else "---" for n in grid.numeric) + "|")
    for cells in grid.cells:
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    lines.append("")
    lines += [f"_{esc(f)}_  " for f in grid.footer]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(grid: Grid) -> str:
    """One line per record; missing numbers are empty fields, lists are space-separated."""
    fields = list(dict.fromkeys(k for rec in grid.records for k in rec))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in grid.records:
        writer.writerow({k: _csv_value(rec.get(k)) for k in fields})
    return buf.getvalue()


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def to_json(grid: Grid) -> str:
    """{meta..., "rows": [records]} with 6-decimal floats and null for missing numbers."""
    return json.dumps({**grid.meta, "rows": grid.records}, indent=2, ensure_ascii=False) + "\n"


def render(grid: Grid, form: str) -> str:
    """The grid as text in `form` (table, markdown, csv or json)."""
    if form == "markdown":
        return markdown(grid)
    if form == "csv":
        return to_csv(grid)
    if form == "json":
        return to_json(grid)
    return plain_text(grid)
