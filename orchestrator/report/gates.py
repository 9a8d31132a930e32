"""The gates CI checks on results: an absolute threshold, and a regression against another sweep.

Each returns the message that fails the step, or None when the gate passes.
"""

from __future__ import annotations

from orchestrator.report.compare import Comparison, difference
from orchestrator.report.results import Report


def worse_than(report: Report, threshold: float) -> str | None:
    """A message when the best row is worse than `threshold` (or there is none), else None."""
    best = report.best
    word = "above" if report.goal == "minimize" else "below"
    if best is None:
        return f"no finished trial has {report.metric}; --fail-if-worse-than {threshold} fails"
    v = best.value(report.metric)
    assert v is not None
    worse = v > threshold if report.goal == "minimize" else v < threshold
    if worse:
        return (f"best {report.metric} {v:.4f} is {word} the threshold {threshold:.4f} "
                f"(--fail-if-worse-than)")
    return None


def regression(comp: Comparison, max_pct: float) -> str | None:
    """A message when this sweep's best is worse than the other's best by more than max_pct %."""
    metric, goal = comp.this.metric, comp.this.goal
    now, before = comp.this.best, comp.other.best
    if before is None:
        return None  # nothing to regress from
    if now is None:
        return f"no finished trial has {metric}, while {comp.other.sweeps[0]} had one"
    a, b = now.value(metric), before.value(metric)
    assert a is not None and b is not None
    _, pct = difference(b, a)
    worse_pct = (pct or 0.0) if goal == "minimize" else -(pct or 0.0)
    if worse_pct > max_pct:
        return (f"best {metric} regressed by {worse_pct:.2f}% ({b:.4f} in "
                f"{comp.other.sweeps[0]} -> {a:.4f} in {comp.this.sweeps[0]}), more than the "
                f"allowed {max_pct:g}% (--max-regression)")
    return None
