"""Results: the rows of the comparison table, read from the ledger (baselines and compare:
compare.py).

A row is one trial, or one configuration aggregated over its seeds (mean, sample std and n over
its *finished* trials only). Numbers are only what the trials computed: metrics and best step
from result.json as the ledger holds it, throughput, parameter count and wall time likewise
(stored when the trial ended; run dirs are never read). A number that does not exist stays None
(shown as missing, never 0).

Order: rows with a finished trial first, by the sweep metric in its goal's direction; failed,
diverged, stopped and unfinished rows after them, whatever their partial numbers say.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from orchestrator.contract import Metric, describe_recorded, finite
from orchestrator.ledger import Ledger, Trial, Validation
from orchestrator.report.known import known_params, sweep_fixed
from orchestrator.states import TrialState

# A row's states, finished first (as the rows are ordered), unfinished last.
STATE_ORDER = (TrialState.FINISHED, TrialState.STOPPED, TrialState.DIVERGED, TrialState.FAILED,
               TrialState.OOM, TrialState.TIMEOUT, TrialState.KILLED, TrialState.RUNNING,
               TrialState.PENDING)


class ResultsError(Exception):
    """A request the ledger cannot answer (unknown sweep, ambiguous baseline, ...)."""


@dataclass(frozen=True)
class Column:
    """One number column: its field name (CSV/JSON), header, and how to format it."""

    key: str
    label: str
    kind: str  # loss | share | step | rate | count | seconds


def columns(metric: str, metrics: Sequence[Metric] = ()) -> list[Column]:
    """The number columns: the sweep metric first, then the program's other metrics in the
    order it declares them."""
    by_name = {m.name: m for m in metrics}
    cols = []
    for name in dict.fromkeys([metric, *by_name]):
        m = by_name.get(name)
        cols.append(Column(name, (m.label if m else None) or name,
                           "share" if m and m.share else "loss"))
    return cols + [Column("best_step", "best step", "step"),
                   Column("tokens_per_s", "tokens/s", "rate"),
                   Column("parameters", "params", "count"),
                   Column("wall_time_s", "wall s", "seconds")]


@dataclass(frozen=True)
class Stat:
    """A cell: one trial's value, or a mean with sample std (None below n=2) over n trials."""

    mean: float | None
    std: float | None = None
    n: int = 0


@dataclass
class Row:
    """One table row: a trial, or a configuration over its seeds."""

    sweep: str
    trials: list[int]
    params: dict[str, Any]
    states: dict[str, int]
    values: dict[str, Stat]
    note: str = ""
    best: bool = False
    baseline: bool = False
    delta: float | None = None
    delta_pct: float | None = None
    delta_std: float | None = None
    # Finished trials by the parameters the row aggregates over (`[seed]`): what pairs it
    # trial for trial with a baseline row.
    members: dict[str, dict[str, float | None]] = field(default_factory=dict)
    reused_from: list[str] = field(default_factory=list)  # `SWEEP/N` of its reused trials

    @property
    def finished(self) -> int:
        """How many of its trials finished."""
        return self.states.get(TrialState.FINISHED, 0)

    @property
    def total(self) -> int:
        """How many trials it holds."""
        return sum(self.states.values())

    @property
    def status(self) -> str:
        """`finished`, one state, or counts such as `2 finished, 1 diverged`."""
        if len(self.states) == 1:
            return next(iter(self.states))
        order = [s for s in STATE_ORDER if s in self.states] + sorted(
            set(self.states) - set(STATE_ORDER))
        return ", ".join(f"{self.states[s]} {s}" for s in order)

    def value(self, key: str) -> float | None:
        """The (mean) value of a column."""
        stat = self.values.get(key)
        return stat.mean if stat else None


@dataclass
class Report:
    """The rows of one or more sweeps, ordered, with the best row marked."""

    sweeps: list[str]
    metric: str
    goal: str
    keys: list[str]  # the parameter columns
    grouped: bool
    rows: list[Row]
    baseline_label: str | None = None
    baseline_value: float | None = None
    metrics: list[Metric] = field(default_factory=list)  # what the programs declare
    # The sweeps' trials (invalid points aside), each with a value for every key it ran with,
    # a key its sweep held fixed included.
    trials: list[Trial] = field(default_factory=list)

    def metric_names(self) -> list[str]:
        """The sweep metric and the declared ones: the metric values a row holds."""
        return list(dict.fromkeys([self.metric, *(m.name for m in self.metrics)]))

    def axis_title(self, name: str | None = None) -> str:
        """A plot axis' title for metric `name` (default: the sweep's): the name and the unit
        the program declares, e.g. `val_loss (nats per character)`."""
        name = name or self.metric
        unit = next((m.unit for m in self.metrics if m.name == name and m.unit), None)
        return f"{name} ({unit})" if unit else name

    @property
    def best(self) -> Row | None:
        """The best finished row, if any."""
        return next((r for r in self.rows if r.best), None)


# -- reading --------------------------------------------------------------------------------------


def trial_values(t: Trial, metrics: Sequence[str]) -> dict[str, float | None]:
    """What one trial computed of `metrics` and the other columns (from the ledger alone);
    None where it computed nothing."""
    values: dict[str, float | None] = {m: finite(t.final.get(m)) for m in metrics}
    values["best_step"] = finite(t.best.get("step"))
    for key in ("tokens_per_s", "parameters", "wall_time_s"):
        values[key] = finite(t.result.get(key))
    if values["wall_time_s"] is None:
        # No result.json (killed, timed out): the process wall time the orchestrator measured.
        values["wall_time_s"] = finite(t.program_wall)
    return values


def curve(history: Sequence[Validation], metric: str, started_at: float | None,
          axis: str) -> tuple[list[float], list[float]]:
    """A trial's learning curve as (x, y): x the step, or (axis `time`) the seconds since the
    trial started; points without a finite value are left out, never drawn as 0."""
    xs, ys = [], []
    for p in history:
        value = p.metrics.get(metric)
        x = p.step if axis == "step" else (
            p.time - started_at if p.time is not None and started_at else None)
        if x is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        xs.append(x)
        ys.append(value)
    return xs, ys


def canon(value: Any) -> str:
    """A parameter value as a stable, hashable key (1 and 1.0 are the same setting)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _stat(values: list[float]) -> Stat:
    if not values:
        return Stat(None, None, 0)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(mean, std, len(values))


def load(ledger: Ledger, names: list[str], group_by: list[str] | None = None,
         per_trial: bool = False) -> Report:
    """The report of sweeps `names`: per trial, or grouped by `group_by`.

    group_by None means the default: every varied parameter except the seeds, and rows per
    trial when no seed is varied (each configuration then has one trial anyway).
    """
    metric = goal = None
    varied: list[str] = []
    trials: list[Trial] = []
    seeds: list[str] = []
    metrics: dict[str, Metric] = {}
    recorded: dict[str, tuple[dict[str, Any], list[str], list[Trial]]] = {}
    for name in names:
        row = ledger.sweep(name)
        if row is None:
            known = ", ".join(s["name"] for s in ledger.sweeps()) or "none yet"
            raise ResultsError(f"no sweep named {name!r} in {ledger.path} (sweeps: {known})")
        if metric is not None and (row["metric"], row["goal"]) != (metric, goal):
            raise ResultsError(f"sweep {name} optimizes {row['metric']} ({row['goal']}), "
                               f"not {metric} ({goal}): their rows do not compare")
        metric, goal = row["metric"], row["goal"]
        varied += [v for v in row["varied"] if v not in varied]
        described = describe_recorded(row["spec"].get("program"))
        seeds += described.seeds
        metrics.update({m.name: m for m in described.metrics if m.name not in metrics})
        own = [t for t in ledger.trials(name) if t.state != TrialState.INVALID]
        recorded[name] = (row["spec"], row["varied"], own)
        trials += own
    # A parameter one sweep did not vary still has a value there: the one its trials ran with.
    asked = [*varied, *(group_by or [])]
    fixed = {name: sweep_fixed(spec, own_varied, own, asked)
             for name, (spec, own_varied, own) in recorded.items()}
    trials = [known_params(t, asked, fixed[t.sweep]) for t in trials]
    assert metric is not None and goal is not None
    if group_by is None and not per_trial:
        keys = [v for v in varied if v not in seeds]
        per_trial = len(keys) == len(varied)
    else:
        keys = list(group_by or [])
        unknown = [k for k in keys if k not in varied and not any(k in t.params for t in trials)]
        if unknown:
            raise ResultsError(f"--group-by {', '.join(unknown)}: not a parameter of these "
                               f"sweeps (varied: {', '.join(varied) or 'none'})")
    report = Report(names, metric, goal, varied if per_trial else keys, not per_trial, [],
                    metrics=list(metrics.values()), trials=trials)
    shown = report.metric_names()
    report.rows = [trial_row(t, shown) for t in trials] if per_trial else \
        _group(trials, keys, shown)
    _order(report)
    return report


def trial_row(t: Trial, metrics: Sequence[str]) -> Row:
    values = {k: Stat(v, None, 0 if v is None else 1)
              for k, v in trial_values(t, metrics).items()}
    note = (t.reason or "") if t.state != TrialState.FINISHED else ""
    return Row(t.sweep, [t.number], dict(t.params), {t.state: 1}, values,
               note or t.reused_note, reused_from=[t.reused_from] if t.reused_from else [])


def _group(trials: list[Trial], keys: list[str], metrics: Sequence[str]) -> list[Row]:
    groups: dict[tuple[str, ...], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.sweep, *[canon(t.params.get(k)) for k in keys]), []).append(t)
    rows = []
    for members in groups.values():
        finished = [(t, trial_values(t, metrics)) for t in members
                    if t.state == TrialState.FINISHED]
        done = [v for _, v in finished]
        keys_seen = done[0].keys() if done else trial_values(members[0], metrics).keys()
        # Means over finished trials only: a partial number from a stopped run is not a result.
        values = {k: _stat([v[k] for v in done if v[k] is not None]) for k in keys_seen}
        states: dict[TrialState, int] = {}
        for t in members:
            states[t.state] = states.get(t.state, 0) + 1
        notes = sorted({t.reason for t in members if t.state != TrialState.FINISHED and t.reason})
        reused = [t.reused_from for t in members if t.reused_from]
        rows.append(Row(members[0].sweep, [t.number for t in members],
                        {k: members[0].params.get(k) for k in keys}, states, values,
                        "; ".join([*notes, f"reused from {', '.join(reused)}"] if reused
                                  else notes),
                        members=_members(finished, keys), reused_from=reused))
    return rows


def _members(finished: list[tuple[Trial, dict[str, float | None]]],
             keys: list[str]) -> dict[str, dict[str, float | None]]:
    """Finished trials' values keyed by their other parameters (`{"train.seed": 1338}`)."""
    return {canon({k: v for k, v in t.params.items() if k not in keys}): values
            for t, values in finished}


def _order(report: Report) -> None:
    sign = 1.0 if report.goal == "minimize" else -1.0

    def key(r: Row) -> tuple[Any, ...]:
        v = r.value(report.metric)
        return (r.finished == 0, v is None, sign * v if v is not None else 0.0,
                r.sweep, [canon(r.params.get(k)) for k in report.keys], r.trials)

    report.rows.sort(key=key)
    for r in report.rows:
        r.best = False
    top = report.rows[0] if report.rows else None
    if top is not None and top.finished and top.value(report.metric) is not None:
        top.best = True
