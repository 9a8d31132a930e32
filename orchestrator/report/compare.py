"""Baselines and comparisons: Δ columns against one row, and two sweeps side by side.

A baseline is a trial (`trial:N`, `trial:SWEEP/N`), one row's parameters (`key=value,...`) or
another sweep's best row (`sweep:NAME`); where rows and baseline pair by seed, Δ ± std is over
the per-seed differences. A comparison matches configurations of two sweeps by their parameters.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.ledger import Ledger
from orchestrator.report.results import Report, ResultsError, Row, canon, load, trial_row
from orchestrator.spec.overrides import split_assignment


@dataclass
class Pair:
    """One configuration in two sweeps: `other` (before) and `this` (now)."""

    params: dict[str, Any]
    this: Row | None
    other: Row | None
    change: float | None = None
    change_pct: float | None = None


@dataclass
class Comparison:
    """`this` sweep against `other`, configurations matched by their parameters."""

    this: Report
    other: Report
    pairs: list[Pair] = field(default_factory=list)



def _matches(value: Any, text: str) -> bool:
    """Whether a parameter value is what `key=text` on the command line means."""
    parsed = yaml.safe_load(text)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return math.isclose(float(value), float(text), rel_tol=1e-9)
        except ValueError:
            return False
    return value == parsed or str(value) == text


def parse_config(text: str) -> dict[str, str]:
    """`key=value,key=value` as a dict (values kept as text, matched loosely)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            k, v = split_assignment(part)
        except ValueError:
            raise ResultsError(f"baseline config {text!r}: expected key=value,... ") from None
        out[k] = v.strip()
    return out


def set_baseline(report: Report, ledger: Ledger, spec: str) -> None:
    """Resolve `--baseline` and fill every row's delta (absolute and %) against it.

    spec: `trial:N` (or a bare N) is trial N of the first sweep, `trial:SWEEP/N` one of another
    sweep (in a grouped table, the row that holds that trial); `sweep:NAME` is NAME's best row
    under the same grouping; `key=value,...` (or `config:key=value,...`) the one row with those
    parameters.
    """
    metric = report.metric
    if spec.startswith("sweep:"):
        name = spec.removeprefix("sweep:")
        other = load(ledger, [name], report.keys if report.grouped else None,
                     per_trial=not report.grouped)
        row = other.best
        if row is None:
            raise ResultsError(f"baseline sweep {name} has no finished trial with {metric}")
        label = f"best of sweep {name}"
    elif spec.startswith("trial:") or spec.isdigit():
        ref = spec.removeprefix("trial:")
        name, _, number = ref.rpartition("/")
        name = name or report.sweeps[0]
        if not number.isdigit():
            raise ResultsError(f"--baseline {spec}: expected trial:N or trial:SWEEP/N")
        found = [t for t in ledger.trials(name) if t.number == int(number)]
        if not found:
            raise ResultsError(f"--baseline {spec}: sweep {name} has no trial {number}")
        # In a grouped table, the trial's own row (its configuration's mean over seeds), so
        # that rows and baseline are the same kind of number.
        row = next((r for r in report.rows if report.grouped and r.sweep == name
                    and int(number) in r.trials), None)
        label = f"the row of trial {number} of {name}" if row else f"trial {number} of {name}"
        row = row or trial_row(found[0], report.metric_names())
        if row.finished == 0:
            raise ResultsError(f"--baseline {spec}: trial {number} of {name} did not finish "
                               f"({found[0].state})")
    else:
        want = parse_config(spec.removeprefix("config:"))
        hits = [r for r in report.rows
                if all(k in r.params and _matches(r.params[k], v) for k, v in want.items())]
        if len(hits) != 1:
            raise ResultsError(f"--baseline {spec}: matches {len(hits)} rows, not one; name "
                               f"more parameters or use trial:N")
        row = hits[0]
        label = ", ".join(f"{k}={v}" for k, v in want.items())
    base = row.value(metric)
    if base is None or row.finished == 0:
        raise ResultsError(f"--baseline {spec}: it has no finished {metric}")
    report.baseline_label, report.baseline_value = label, base
    for r in report.rows:
        r.baseline = (r.sweep, r.trials) == (row.sweep, row.trials)
        v = r.value(metric)
        r.delta, r.delta_pct = difference(base, v)
        r.delta_std = None if r.baseline else paired_std(r, row, metric)


def paired_std(row: Row, base: Row, metric: str) -> float | None:
    """Sample std of the trial-by-trial differences `row - base`, where the two rows' finished
    trials pair one to one by their other parameters (the seeds), at least two pairs; else None.

    Only then: their mean is exactly the difference of the rows' means, so Δ ± this std is the
    paired effect over the seeds, not an unpaired comparison dressed as one.
    """
    if len(row.members) < 2 or row.members.keys() != base.members.keys():
        return None
    diffs = []
    for key, values in row.members.items():
        a, b = values.get(metric), base.members[key].get(metric)
        if a is None or b is None:
            return None
        diffs.append(a - b)
    return statistics.stdev(diffs)


def difference(before: float | None, now: float | None) -> tuple[float | None, float | None]:
    """`now - before` and that as a % of |before|; None where either is missing."""
    if before is None or now is None:
        return None, None
    delta = now - before
    return delta, (delta / abs(before) * 100.0 if before else None)


def compare_sweeps(ledger: Ledger, this: Report, other_name: str,
                   group_by: list[str] | None) -> Comparison:
    """`this` (one sweep's report) against sweep `other_name`.

    By default both sides are grouped by every parameter either sweep varies (seeds aside),
    so that neither side's rows average over a parameter that the other sweep holds fixed
    (a sweep that varies `model.n_layer` against one that fixes it: its rows are matched per
    depth, not averaged over depths); with `group_by`, by those keys on both sides.
    """
    keys = list(this.keys)
    if group_by is None:
        keys += [k for k in load(ledger, [other_name]).keys if k not in keys]
        if keys != this.keys or not this.grouped:  # per trial, or by fewer keys: regroup
            this = load(ledger, this.sweeps, keys)
    return compare(this, load(ledger, [other_name], keys))


def compare(this: Report, other: Report) -> Comparison:
    """Match `this`'s rows with `other`'s by their parameters (the report's keys)."""
    keys = this.keys

    def key(r: Row) -> tuple[str, ...]:
        return tuple(canon(r.params.get(k)) for k in keys)

    theirs: dict[tuple[str, ...], Row] = {}
    for r in other.rows:
        theirs.setdefault(key(r), r)
    out = Comparison(this, other)
    for r in this.rows:
        o = theirs.pop(key(r), None)
        ok = r.finished and o is not None and o.finished
        change = (difference(o.value(this.metric), r.value(this.metric)) if ok and o
                  else (None, None))
        out.pairs.append(Pair({k: r.params.get(k) for k in keys}, r, o, *change))
    for o in other.rows:  # configurations the new sweep no longer has
        if key(o) in theirs:
            out.pairs.append(Pair({k: o.params.get(k) for k in keys}, None, o))
    return out
