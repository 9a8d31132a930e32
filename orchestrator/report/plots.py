"""Plots of a sweep as PNGs: learning curves, the metric against each parameter, a grid heatmap.

Headless: figures are drawn with matplotlib's object API on the Agg canvas, never pyplot, so
no display, no backend switch and no global figure state are involved. Like the tables, the
plots show only what trials computed: parameter plots and the heatmap use finished trials only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from orchestrator.contract import describe_recorded
from orchestrator.ledger import Ledger, Trial
from orchestrator.report.results import Report, curve, load, trial_values
from orchestrator.report.tables import fmt_param
from orchestrator.states import TrialState

BEST = "#d62728"
SIZE = (7.5, 4.6)
DPI = 100


def plot_sweep(ledger: Ledger, name: str, out_dir: Path) -> list[Path]:
    """Write every plot of sweep `name` into `out_dir`; return the PNG paths in order."""
    sweep = ledger.sweep(name)
    if sweep is None:
        raise KeyError(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = load(ledger, [name])
    trials = [t for t in ledger.trials(name) if t.state != TrialState.INVALID]
    seeds = describe_recorded(sweep["spec"].get("program")).seeds
    keys = [v for v in sweep["varied"] if v not in seeds]
    metric, goal = sweep["metric"], sweep["goal"]
    paths: list[Path] = []
    for axis in ("step", "time"):
        fig = curves(ledger, name, trials, keys, report, axis)
        if fig is not None:
            paths.append(_save(fig, out_dir / f"curves_{axis}.png"))
    done = [t for t in trials if t.state == TrialState.FINISHED
            and trial_values(t, [metric])[metric] is not None]
    for key in keys:
        if done:
            others = [k for k in keys if k != key]
            fig = by_parameter(name, done, key, metric, goal, others[0] if others else None,
                               report.axis_title())
            paths.append(_save(fig, out_dir / f"param_{_slug(key)}.png"))
    if sweep["spec"].get("method") == "grid" and len(keys) == 2 and done:
        fig = heatmap(name, done, keys[0], keys[1], metric, goal, report.axis_title())
        paths.append(_save(fig, out_dir / f"heatmap_{_slug(keys[0])}_{_slug(keys[1])}.png"))
    return paths


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _short(value: Any, siblings: list[Any], width: int = 48, key: str | None = None) -> str:
    """A readable name for one value of a parameter among its siblings (`tables.fmt_param`)
    for a legend or a tick: a whole-section value one entry per line, anything else cut to
    `width`."""
    if isinstance(value, dict):
        text = fmt_param(value, siblings, key)
        if "{" not in text:  # entries `k=v,k2=v2`: one a line, lists left whole
            return re.sub(r",(?=[\w.]+=)", "\n", text)
    else:
        text = f"{key}={value}" if key else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _label(params: dict[str, Any], keys: list[str], trials: list[Trial]) -> str:
    parts = [_short(params.get(k), [t.params.get(k) for t in trials], key=k) for k in keys]
    return " ".join(parts) or "base config"


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _sort_values(values: list[Any]) -> list[Any]:
    unique = list({repr(v): v for v in values}.values())
    return sorted(unique) if _numeric(unique) else sorted(unique, key=str)


def curves(ledger: Ledger, name: str, trials: list[Trial], keys: list[str], report: Report,
           axis: str) -> Figure | None:
    """The metric during training against step or wall time, a colour per configuration.

    The best configuration's trials are drawn thick in red; unfinished trials dashed.
    """
    metric = report.metric
    best = report.best
    best_trials = set(best.trials) if best else set()
    groups = sorted({_label(t.params, keys, trials) for t in trials})
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    drawn, labelled = 0, set()
    for t in trials:
        xs, ys = curve(ledger.history(t), metric, t.started_at, axis)
        if not xs:
            continue
        group = _label(t.params, keys, trials)
        is_best = t.number in best_trials
        label = f"best: {group}" if is_best else group
        if t.state != TrialState.FINISHED:
            label += f" ({t.state})"
        color = BEST if is_best else _color(groups.index(group), len(groups))
        ax.plot(xs, ys, marker="o", markersize=3 if not is_best else 4,
                linewidth=2.6 if is_best else 1.2, alpha=1.0 if is_best else 0.75,
                linestyle="-" if t.state == TrialState.FINISHED else "--", color=color,
                zorder=3 if is_best else 2, label=None if label in labelled else label)
        labelled.add(label)
        drawn += 1
    if not drawn:
        return None
    ax.set_title(f"sweep {name}: {metric} during training ({drawn} trials)")
    ax.set_xlabel("training step" if axis == "step" else "wall time since trial start (s)")
    ax.set_ylabel(report.axis_title())
    ax.grid(True, alpha=0.3)
    if len(labelled) <= 12:
        if max(len(line) for label in labelled for line in label.splitlines()) > 40 or \
                sum(label.count("\n") + 1 for label in labelled) > 8:
            # Long names would cover the curves: the legend goes beside the plot instead.
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
            fig.set_size_inches(SIZE[0] * 1.6, SIZE[1] * 1.2)
        else:
            ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    return fig


def _color(index: int, count: int) -> Any:
    """The index-th of `count` colours: tab10 less its red, which marks the best (BEST)."""
    from matplotlib import colormaps

    palette = [c for i, c in enumerate(colormaps["tab10"].colors) if i != 3]
    if count <= len(palette):
        return palette[index]
    return colormaps["viridis"](index / max(1, count - 1))


def by_parameter(name: str, trials: list[Trial], key: str, metric: str, goal: str,
                 color_by: str | None = None, axis_title: str | None = None) -> Figure:
    """Final metric of finished trials against one parameter: scatter, or boxes by value.

    Scatter points are coloured by `color_by` (another varied parameter) when it has at most
    ten values, so an interaction between the two shows.
    """
    pairs = [(t.params.get(key), trial_values(t, [metric])[metric], t) for t in trials]
    pairs = [(x, y, t) for x, y, t in pairs if x is not None and y is not None]
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    sign = 1 if goal == "minimize" else -1
    best = min(pairs, key=lambda p: sign * p[1]) if pairs else None
    xs = [p[0] for p in pairs]
    if _numeric(xs):
        shades = _sort_values([t.params.get(color_by) for _, _, t in pairs]) if color_by else []
        if not 1 < len(shades) <= 10:
            shades = []
        for i, shade in enumerate(shades or [None]):
            sub = [p for p in pairs if not shades or p[2].params.get(color_by) == shade]
            ax.scatter([p[0] for p in sub], [p[1] for p in sub], s=30, alpha=0.85,
                       color=_color(i, max(1, len(shades))),
                       label=f"{color_by}={shade}" if shades else
                       f"finished trial ({len(pairs)})")
        values = _sort_values(xs)
        positive = all(v > 0 for v in values)
        if positive and len(values) > 1 and max(values) / min(values) >= 10:
            ax.set_xscale("log")  # learning rates and the like span decades
        if len(values) <= 8:
            ax.set_xticks(values, [str(v) for v in values])
            ax.minorticks_off()
        if best:
            ax.scatter([best[0]], [best[1]], s=160, marker="*", color=BEST, zorder=3,
                       label=f"best: trial {best[2].number}")
    else:
        cats = _sort_values(xs)
        data = [[y for x, y, _ in pairs if x == c] for c in cats]
        # A box only where a value has two or more trials: one trial has no spread to draw.
        spread = [i for i, ys in enumerate(data, 1) if len(ys) > 1]
        if spread:
            ax.boxplot([data[i - 1] for i in spread], positions=spread)
        ax.set_xticks(range(1, len(cats) + 1),
                      [f"{_short(c, cats, 24)}\nn={len(ys)}" for c, ys in zip(cats, data)])
        for i, ys in enumerate(data, 1):
            ax.scatter([i] * len(ys), ys, s=16, alpha=0.6, color="#1f77b4")
        if best:
            ax.scatter([cats.index(best[0]) + 1], [best[1]], s=160, marker="*", color=BEST,
                       zorder=3, label=f"best: trial {best[2].number}")
    ax.set_title(f"sweep {name}: final {metric} by {key} "
                 f"({'lower' if goal == 'minimize' else 'higher'} is better)")
    ax.set_xlabel(key)
    ax.set_ylabel(axis_title or metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def heatmap(name: str, trials: list[Trial], row_key: str, col_key: str, metric: str,
            goal: str, axis_title: str | None = None) -> Figure:
    """Mean final metric over finished trials per (row, col) grid cell; empty cells grey."""
    import numpy as np

    rows = _sort_values([t.params.get(row_key) for t in trials])
    cols = _sort_values([t.params.get(col_key) for t in trials])
    cells: dict[tuple[int, int], list[float]] = {}
    for t in trials:
        v = trial_values(t, [metric])[metric]
        r, c = t.params.get(row_key), t.params.get(col_key)
        if v is not None and r in rows and c in cols:
            cells.setdefault((rows.index(r), cols.index(c)), []).append(v)
    grid = np.full((len(rows), len(cols)), np.nan)
    for (i, j), vs in cells.items():
        grid[i, j] = sum(vs) / len(vs)
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    # Better is brighter either way: reversed colormap when lower is better.
    from matplotlib import colormaps

    cmap = colormaps["viridis_r" if goal == "minimize" else "viridis"].copy()
    cmap.set_bad("#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    cbar = fig.colorbar(image, ax=ax)
    cbar.set_label(f"mean {axis_title or metric}")
    ax.set_xticks(range(len(cols)), [_short(c, cols, 24) for c in cols])
    ax.set_yticks(range(len(rows)), [_short(r, rows, 24) for r in rows])
    ax.set_xlabel(col_key)
    ax.set_ylabel(row_key)
    finite = grid[~np.isnan(grid)]
    best = (np.nanargmin(grid) if goal == "minimize" else np.nanargmax(grid)) \
        if finite.size else None
    mid = float(np.nanmean(finite)) if finite.size else 0.0
    for i in range(len(rows)):
        for j in range(len(cols)):
            n = len(cells.get((i, j), []))
            text = "no result" if n == 0 else f"{grid[i, j]:.4f}\nn={n}"
            bright = n and ((grid[i, j] < mid) == (goal == "minimize"))
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if bright else "white" if n else "#555555")
    if best is not None:
        i, j = divmod(int(best), len(cols))
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=BEST,
                               linewidth=2.5))
    ax.set_title(f"sweep {name}: mean final {metric} per grid cell "
                 f"(best outlined, {'lower' if goal == 'minimize' else 'higher'} is better)",
                 fontsize=10)
    fig.tight_layout()
    return fig
