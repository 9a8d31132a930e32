"""`orch report`: one self-contained HTML page of one or more sweeps, readable offline.

Everything is inside the file: plotly.js once, the figures' data, a few lines of CSS and the
only hand-written script, which sorts a table when its header is clicked (plotly's tables do
not sort). The comparison table is `orch results`'s own grid (the same rows, groups, cells and
baseline deltas); each cell also carries the record's number, which sorting uses.
"""

from __future__ import annotations

import html
import json
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import yaml

from orchestrator.ledger import Ledger, Trial, iter_states
from orchestrator.report import best as best_mod
from orchestrator.report import compare as compare_mod
from orchestrator.report import figures, importance
from orchestrator.report import results as results_mod
from orchestrator.report.results import ResultsError, trial_values
from orchestrator.report.tables import MISSING, Grid, fmt, fmt_param, report_grid
from orchestrator.states import TrialState

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; user-select: none; }
th[data-dir=asc]::after { content: " ▲"; } th[data-dir=desc]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { color: #067d17; font-weight: 600; } tr.dim td { color: #999; }
.note { color: #555; font-size: 13px; } pre { background: #f7f7f7; padding: 10px; overflow: auto; }
.scroll { max-height: 600px; overflow: auto; }
"""

# Sorts a table by the clicked column: numbers as numbers, text as text, missing always last.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var dir = th.dataset.dir === "asc" ? -1 : 1;
      Array.prototype.forEach.call(heads, function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir === 1 ? "asc" : "desc";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        var nx = Number(x), ny = Number(y);
        return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def render(ledger: Ledger, names: list[str], baseline: str | None = None) -> str:
    """The whole page of sweeps `names` (ResultsError for an unknown sweep or baseline)."""
    report = results_mod.load(ledger, names)
    if baseline:
        compare_mod.set_baseline(report, ledger, baseline)
    sweeps = [ledger.sweep(n) or {} for n in names]
    trials = report.trials  # with the values of parameters a sweep held fixed
    # The parameters that make a configuration: the varied ones less the seeds the programs
    # declare (a default load leaves exactly those as its keys).
    keys = list(report.keys)
    metric, goal = report.metric, report.goal
    pending = importance.start(trials, keys, metric, goal)
    top = report.best
    best_trials = {(top.sweep, n) for n in top.trials} if top else set()
    histories = {t.id: ledger.history(t) for t in trials}
    named = figures.names(trials, keys)
    curves = [figures.curves(histories, trials, keys, named, metric, best_trials, axis,
                             report.axis_title()) for axis in ("step", "time")]
    parallel = figures.parallel(trials, keys, named, metric, goal)
    marginals = figures.marginals(trials, keys, named, metric)
    title = f"sweep report: {', '.join(names)}"
    parts = [f"<h1>{_e(title)}</h1>", _summary(sweeps, trials, metric, goal),
             "<h2>best configuration</h2>", _best(ledger, names, top is not None),
             "<h2>comparison table</h2>", _grid_table(report_grid(report), report)]
    imp = pending()
    plots = [("learning curves", curves),
             ("parameters against the metric", [parallel]),
             ("parameter importance", [figures.importance(imp)]),
             ("marginal effects", [marginals])]
    embedded = False
    for heading, figs in plots:
        parts.append(f"<h2>{_e(heading)}</h2>")
        if heading == "parameter importance":
            parts.append(_importance_text(imp))
        drawn = [f for f in figs if f is not None]
        if not drawn and not (heading == "parameter importance" and imp.reason):
            parts.append('<p class="note">nothing to plot: no finished trial with '
                         f"{_e(metric)}{' and no varied parameter' if not keys else ''}</p>")
        for fig in drawn:
            parts.append(_figure(fig, f"fig-{len(parts)}", include_js=not embedded))
            embedded = True
    parts += ["<h2>trials</h2>", _trials_table(trials, keys, named, metric)]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            f"<script>{SORT_JS}</script>\n</body></html>\n")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _figure(fig: go.Figure | dict[str, Any], div_id: str, include_js: bool) -> str:
    """The figure as a div; plotly.js itself goes into the page once, with the first figure."""
    return pio.to_html(fig, include_plotlyjs=include_js, full_html=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True}, validate=False)


def _summary(sweeps: list[dict[str, Any]], trials: list[Trial], metric: str, goal: str) -> str:
    rows = []
    for s in sweeps:
        mine = [t for t in trials if t.sweep == s.get("name")]
        counts = ", ".join(f"{n} {state}" for state, n in iter_states(mine)) or "no trials"
        rows.append(f"<li><b>{_e(s.get('name'))}</b> ({_e(s.get('state'))}): {_e(counts)}; "
                    f"varied: {_e(', '.join(s.get('varied', [])) or 'nothing')}; spec "
                    f"<code>{_e(s.get('spec_path') or MISSING)}</code></li>")
    better = "lower" if goal == "minimize" else "higher"
    return (f"<p>metric <b>{_e(metric)}</b> ({better} is better). Numbers are what the trials "
            f"computed, read from the ledger; {MISSING} marks a number that does not exist."
            f"</p><ul>{''.join(rows)}</ul>")


def _best(ledger: Ledger, names: list[str], any_finished: bool) -> str:
    """The best finished trial: its parameters, metric, run dir and full config."""
    if not any_finished:
        return '<p class="note">no finished trial yet</p>'
    per_trial = results_mod.load(ledger, names, per_trial=True)
    row = per_trial.best
    assert row is not None
    trial = next(t for t in ledger.trials(row.sweep) if t.number == row.trials[0])
    params = " ".join(f"{k}={fmt_param(v)}" for k, v in trial.params.items()) or "base config"
    train = best_mod.train_command(best_mod.program_written(ledger, trial.sweep), "best.yaml")
    lines = [f"<p>trial <b>{trial.number}</b> of sweep <b>{_e(trial.sweep)}</b>: "
             f"{_e(per_trial.metric)} <b>{fmt('loss', row.value(per_trial.metric))}</b> "
             f"(the best single trial; the table ranks configurations by their mean over "
             f"seeds)</p>", f"<p>parameters: <code>{_e(params)}</code><br>run dir: "
             f"<code>{_e(trial.run_dir or MISSING)}</code><br>config hash: "
             f"<code>{_e(trial.config_hash)}</code></p>",
             f"<p>runnable: <code>orch best {_e(trial.sweep)} --out best.yaml</code>, then "
             f"<code>{_e(train)}</code></p>"]
    try:
        config, source = best_mod.trial_config(trial)
        lines.append(f"<details><summary>full config ({_e(source)})</summary><pre>"
                     f"{_e(yaml.safe_dump(config, sort_keys=False))}</pre></details>")
    except ResultsError as e:
        lines.append(f'<p class="note">{_e(e)}</p>')
    return "\n".join(lines)


def _value(v: Any) -> str:
    """A record value as a cell's sort key: numbers as numbers, missing as empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(v)
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _table(headers: list[str], numeric: list[bool], cells: list[list[str]],
           values: list[list[Any]], styles: list[str], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row, vals, style in zip(cells, values, styles):
        tds = "".join(f'<td{" class=num" if num else ""} data-v="{_e(_value(v))}">{_e(c)}</td>'
                      for c, v, num in zip(row, vals, numeric))
        body.append(f'<tr class="{style}">{tds}</tr>')
    return (f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{head}'
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _grid_table(grid: Grid, report: results_mod.Report) -> str:
    """`orch results`'s grid, each cell keyed by its record's value for sorting."""
    keys = (["sweep"] if len(report.sweeps) > 1 else []) + \
        (["n"] if report.grouped else ["trial"]) + report.keys + \
        [c.key for c in results_mod.columns(report.metric, report.metrics)] + \
        (["delta", "delta_pct"] if report.baseline_value is not None else []) + \
        ["status", "note"]
    assert len(keys) == len(grid.headers), (keys, grid.headers)
    values = [[rec.get(k) for k in keys] for rec in grid.records]
    notes = "".join(f'<p class="note">{_e(f)}</p>' for f in grid.footer)
    return _table(grid.headers, grid.numeric, grid.cells, values, grid.styles,
                  "results") + notes


def _trials_table(trials: list[Trial], keys: list[str], named: figures.Names,
                  metric: str) -> str:
    """Every trial: its state, parameters, metric, wall time, run dir and why it ended."""
    multi = len({t.sweep for t in trials}) > 1
    heads = (["sweep"] if multi else []) + ["trial", *keys, "state", metric, "best step",
                                             "wall s", "run dir", "note"]
    numeric = ([False] if multi else []) + [True] + [False] * len(keys) + \
        [False, True, True, True, False, False]
    cells, values, styles = [], [], []
    for t in trials:
        got = trial_values(t, [metric])
        vals = ([t.sweep] if multi else []) + [t.number, *[t.params.get(k) for k in keys],
                                               str(t.state), got.get(metric),
                                               got.get("best_step"), got.get("wall_time_s"),
                                               t.run_dir, t.reason or t.reused_note]
        shown = ([t.sweep] if multi else []) + [
            str(t.number), *[named[k][repr(t.params.get(k))] for k in keys],
            str(t.state), fmt("loss", got.get(metric)), fmt("step", got.get("best_step")),
            fmt("seconds", got.get("wall_time_s")), t.run_dir or MISSING, t.reason or t.reused_note]
        cells.append(shown)
        values.append(vals)
        styles.append("" if t.state == TrialState.FINISHED else "dim")
    return _table(heads, numeric, cells, values, styles, "trials")


def _importance_text(imp: importance.Importances) -> str:
    if imp.reason:
        return f'<p class="note">{_e(imp.reason)}</p>'
    return (f'<p class="note">fANOVA (Optuna) over {imp.n} finished trials: each parameter\'s '
            f"share of the variance of {_e(imp.metric)} a random forest explains; ρ is the "
            f"Spearman correlation of a numeric parameter with {_e(imp.metric)} "
            f"(+: a larger value gives a larger {_e(imp.metric)}). With few trials, read it "
            f"as a hint.</p>")
