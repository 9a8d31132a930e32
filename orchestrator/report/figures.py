"""The report's interactive plots, as plotly figures: curves, parallel coordinates, importance,
marginal effects.

Like the tables and the PNG plots, they show only what trials computed: parameter plots use
finished trials only, a spread is drawn only where there are at least two trials to spread,
every mean says its n, and curves against wall time start at the trial's start (0 s).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from orchestrator.ledger import Trial, Validation
from orchestrator.report.importance import Importances, scored
from orchestrator.report.results import curve
from orchestrator.report.tables import fmt_param
from orchestrator.states import TrialState

BEST = "#d62728"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")  # tab10 less its red, which marks the best
MAX_LEGEND = 20  # configurations named in a legend; more would hide the plot
MAX_CATEGORIES = 12  # a numeric parameter of more values is plotted on a numeric axis


Names = dict[str, dict[str, str]]  # parameter -> repr of a value -> its text


def names(trials: list[Trial], keys: list[str]) -> Names:
    """Each parameter's distinct values as text among the others (`tables.fmt_param`), by
    repr: formatted once per value for the whole page (a random search's 500 learning rates,
    each set apart from 499 siblings, are the cost)."""
    out = {}
    for k in keys:
        distinct = list({repr(t.params.get(k)): t.params.get(k) for t in trials}.values())
        out[k] = {repr(v): fmt_param(v, distinct) for v in distinct}
    return out


def _labels(trials: list[Trial], keys: list[str], named: Names) -> dict[int, str]:
    """Each trial's configuration as text, by id (the sweep's name first when several)."""
    multi = len({t.sweep for t in trials}) > 1
    return {t.id: (f"{t.sweep}: " if multi else "") + (
        " ".join(f"{k}={named[k][repr(t.params.get(k))]}" for k in keys) or "base config")
        for t in trials}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {"title": {"text": title}, "template": "plotly_white", "height": 460,
            "margin": {"l": 70, "r": 30, "t": 60, "b": 60}, **extra}


def curves(histories: dict[int, list[Validation]], trials: list[Trial], keys: list[str],
           named: Names, metric: str, best: set[tuple[str, int]],
           axis: str, axis_title: str | None = None) -> dict[str, Any] | None:
    """`metric` during training against step or wall time since the trial started (from 0).

    `histories`: each trial's validation points by trial id (`Ledger.history`). A colour per
    configuration (seeds share it), the best configuration's trials thick red, unfinished
    trials dashed; None when no trial has a point. A plain figure dict, not a go.Figure:
    500 trials' traces are not validated and deep-copied for nothing.
    """
    labels = _labels(trials, keys, named)
    groups = sorted(set(labels.values()))
    traces: list[dict[str, Any]] = []
    named: set[str] = set()
    for t in trials:
        xs, ys = curve(histories.get(t.id, []), metric, t.started_at, axis)
        if not xs:
            continue
        group = labels[t.id]
        top = (t.sweep, t.number) in best
        color = BEST if top else PALETTE[groups.index(group) % len(PALETTE)]
        traces.append({
            "type": "scatter", "mode": "lines+markers", "x": xs, "y": ys,
            "name": ("best: " if top else "") + group, "legendgroup": group,
            "showlegend": len(groups) <= MAX_LEGEND and group not in named,
            "line": {"color": color, "width": 3 if top else 1.3,
                     "dash": "solid" if t.state == TrialState.FINISHED else "dash"},
            "marker": {"size": 4}, "opacity": 1.0 if top else 0.75,
            "hovertemplate": f"trial {t.number} ({t.state})<br>{group}<br>%{{x}}: "
                             f"%{{y:.4f}}<extra></extra>"})
        named.add(group)
    if not traces:
        return None
    xlabel = "training step" if axis == "step" else "wall time since trial start (s)"
    layout = _layout(
        f"{metric} during training against {'step' if axis == 'step' else 'wall time'} "
        f"({len(traces)} trials; dashed: not finished)",
        xaxis={"title": {"text": xlabel}, "rangemode": "tozero"},
        yaxis={"title": {"text": axis_title or metric}})
    # Unvalidated, the figure names no template: it carries the template's own dict.
    layout["template"] = pio.templates[layout["template"]].to_plotly_json()
    return {"data": traces, "layout": layout}


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _ordered(values: list[Any]) -> list[Any]:
    unique = list({repr(v): v for v in values}.values())
    return sorted(unique) if _numeric(unique) else sorted(unique, key=str)


def parallel(trials: list[Trial], keys: list[str], named: Names, metric: str,
             goal: str) -> go.Figure | None:
    """Parameters of the finished trials against the metric, one line per trial."""
    done = scored(trials, metric)
    keys = [k for k in keys if all(k in t.params for t, _ in done)]
    if not done or not keys:
        return None
    dims = []
    for k in keys:
        values = [t.params[k] for t, _ in done]
        if _numeric(values):
            low, high = min(values), max(values)
            log = low > 0 and high / low >= 10  # learning rates span decades
            dims.append({"label": f"log10 {k}" if log else k,
                         "values": [math.log10(v) if log else v for v in values]})
        else:
            cats = _ordered(values)
            dims.append({"label": k, "values": [cats.index(v) for v in values],
                         "tickvals": list(range(len(cats))),
                         "ticktext": [named[k][repr(c)] for c in cats]})
    ys = [v for _, v in done]
    dims.append({"label": metric, "values": ys})
    line = {"color": ys, "colorscale": "Viridis", "showscale": True,
            "reversescale": goal == "minimize", "colorbar": {"title": {"text": metric}}}
    return go.Figure({"data": [{"type": "parcoords", "line": line, "dimensions": dims}],
                      "layout": _layout(f"parameters against {metric} ({len(done)} finished "
                                        f"trials; brighter is better)",
                                        margin={"l": 80, "r": 80, "t": 90, "b": 40})})


def importance(imp: Importances) -> go.Figure | None:
    """fANOVA shares as bars, coloured by the correlation's sign; None when there are none."""
    if imp.reason or not imp.params:
        return None
    params = list(reversed(imp.params))  # most important on top
    colors = ["#7f7f7f" if p.rho is None else "#d62728" if p.rho > 0 else "#1f77b4"
              for p in params]
    text = ["categorical" if p.rho is None else f"ρ = {p.rho:+.2f}" for p in params]
    bar = {"type": "bar", "orientation": "h", "x": [p.importance for p in params],
           "y": [p.name for p in params], "marker": {"color": colors}, "text": text,
           "textposition": "auto",
           "hovertemplate": "%{y}: %{x:.1%} of the variance, %{text}<extra></extra>"}
    return go.Figure({"data": [bar], "layout": _layout(
        f"parameter importance for {imp.metric} (fANOVA, {imp.n} finished trials; red: "
        f"larger value, larger {imp.metric}; blue: smaller)",
        height=max(260, 90 + 40 * len(params)),
        xaxis={"title": {"text": "share of the explained variance"}, "tickformat": ".0%",
               "range": [0, 1]})})


def marginals(trials: list[Trial], keys: list[str], named: Names,
              metric: str) -> go.Figure | None:
    """Each parameter's marginal effect: every finished trial's metric by the parameter's
    value and, for a parameter of a few values, per value the mean with its sample std, drawn
    only where n >= 2, and its n written. A numeric parameter of many values (a random search's
    lr) is a plain scatter on a numeric axis: each value has one trial, there is no mean."""
    done = scored(trials, metric)
    keys = [k for k in keys if all(k in t.params for t, _ in done)]
    if not done or not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys, horizontal_spacing=0.08,
                        vertical_spacing=0.22 if rows > 1 else 0.1)
    for i, k in enumerate(keys):
        where = {"row": i // cols + 1, "col": i % cols + 1}
        values = [t.params[k] for t, _ in done]
        cats = _ordered(values)
        continuous = _numeric(cats) and len(cats) > MAX_CATEGORIES
        xs = values if continuous else [named[k][repr(v)] for v in values]
        fig.add_trace(go.Scatter(
            x=xs, y=[y for _, y in done], mode="markers",
            marker={"size": 7, "color": "#1f77b4", "opacity": 0.55}, name="a finished trial",
            legendgroup="trial", showlegend=i == 0, text=[f"trial {t.number}" for t, _ in done],
            hovertemplate="%{text}: %{y:.4f}<extra></extra>"), **where)
        if continuous:
            low, high = min(cats), max(cats)
            fig.update_xaxes(type="log" if low > 0 and high / low >= 10 else "linear", **where)
            continue
        texts = [named[k][repr(v)] for v in cats]
        by: dict[str, list[float]] = {n: [] for n in texts}
        for x, (_, y) in zip(xs, done):
            by[x].append(y)
        spread = [statistics.stdev(by[n]) if len(by[n]) > 1 else None for n in texts]
        fig.add_trace(go.Scatter(
            x=texts, y=[statistics.fmean(by[n]) for n in texts], mode="markers+lines+text",
            name="mean (± std where n ≥ 2)", legendgroup="mean", showlegend=i == 0,
            line={"color": "#444444", "width": 1},
            marker={"size": 11, "symbol": "diamond", "color": "#444444"},
            error_y={"type": "data", "array": spread,
                     "visible": any(s is not None for s in spread)},
            text=[f"n={len(by[n])}" for n in texts], textposition="middle right",
            hovertemplate="%{x}: mean %{y:.4f}, %{text}<extra></extra>"), **where)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=texts, **where)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_layout(_layout(f"marginal effect of each parameter on {metric} (finished "
                              f"trials; n per value)", height=360 * rows))
    return fig
