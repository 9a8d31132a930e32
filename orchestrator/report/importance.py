"""Parameter importance: which varied parameters explain the metric's variance, and which way.

The importance is Optuna's fANOVA (`optuna.importance.FanovaImportanceEvaluator`: a random
forest fit on the trials, its variance decomposed per parameter), computed on an in-memory
Optuna study built from the ledger's finished trials; the shares add up to 1. Beside it, the
Spearman rank correlation of a numeric parameter with the metric says the direction (+: a
larger value gives a larger metric). Only finished trials with the metric count; seeds are not
parameters here (their variance is the noise the others are measured against).
"""

from __future__ import annotations

import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator.ledger import Trial
from orchestrator.report.results import trial_values
from orchestrator.states import TrialState

# Below this many finished trials a forest fit on them explains noise as much as anything.
MIN_TRIALS = 8
SEED = 0  # the forest's seed: the same ledger gives the same importances
# The forest's size. Optuna's defaults (64 trees, depth 64) take 6 s on 500 trials of a random
# search; 32 trees of depth 8 give the same shares to 3 decimals in 0.7 s (report_speed.py).
TREES, DEPTH = 32, 8


@dataclass(frozen=True)
class ParamImportance:
    """One parameter: its share of the explained variance and, if numeric, Spearman's rho."""

    name: str
    importance: float
    rho: float | None  # None: categorical, or constant among the finished trials

    @property
    def sign(self) -> str:
        """`+`, `−` or `` (no direction: categorical or no correlation)."""
        if self.rho is None or self.rho == 0:
            return ""
        return "+" if self.rho > 0 else "−"


@dataclass
class Importances:
    """The importances of one metric over `n` finished trials, or why there are none."""

    metric: str
    n: int
    params: list[ParamImportance] = field(default_factory=list)  # most important first
    reason: str | None = None  # set when there is nothing to show


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _distribution(values: list[Any]) -> Any:
    """The Optuna distribution a parameter's values lie in; log scale where all are positive
    and they span a factor of 10 or more (learning rates), so the forest sees the grid evenly."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if _numeric(values):
        low, high = float(min(values)), float(max(values))
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    return CategoricalDistribution(sorted({_category(v) for v in values}))


def _category(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def scored(trials: list[Trial], metric: str) -> list[tuple[Trial, float]]:
    """Finished trials with a finite value of `metric`, each with that value; a result
    counts once however many sweeps hold it (a reused trial and its original are one)."""
    out, seen = [], set()
    for t in trials:
        if t.state != TrialState.FINISHED or t.origin in seen:
            continue
        seen.add(t.origin)
        value = trial_values(t, [metric])[metric]
        if value is not None:
            out.append((t, value))
    return out


def compute(trials: list[Trial], keys: list[str], metric: str, goal: str,
            min_trials: int = MIN_TRIALS) -> Importances:
    """fANOVA importances of `keys` for `metric` over the finished trials. `keys` are the
    parameters that make a configuration (`results.load(...).keys`: seeds are not among them)."""
    done = scored(trials, metric)
    result = Importances(metric, len(done))
    keys = [k for k in keys if all(k in t.params for t, _ in done)]
    varied = [k for k in keys if len({_category(t.params[k]) for t, _ in done}) > 1]
    if len(done) < min_trials:
        result.reason = (f"too few finished trials for parameter importance: {len(done)} with "
                         f"{metric}, at least {min_trials} needed")
    elif not varied:
        result.reason = "no parameter varies among the finished trials"
    elif len({v for _, v in done}) < 2:
        result.reason = f"every finished trial has the same {metric}"
    if result.reason:
        return result
    shares = _fanova(done, varied, goal)
    result.params = sorted((ParamImportance(k, shares[k], _rho(done, k)) for k in varied),
                           key=lambda p: (-p.importance, p.name))
    return result


def start(trials: list[Trial], keys: list[str], metric: str,
          goal: str) -> Callable[[], Importances]:
    """Begin `compute` beside the caller's own work; calling the result returns it.

    Where processes can be forked, a child imports scikit-learn and fits the forest (two thirds
    of a 500-trial report's time) while the caller draws the rest of the page; elsewhere, or if
    the child dies, it is computed in line. Same numbers either way: the forest is seeded.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return lambda: compute(trials, keys, metric, goal)
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    future = pool.submit(compute, trials, keys, metric, goal)

    def result() -> Importances:
        try:
            return future.result()
        except BrokenProcessPool:
            return compute(trials, keys, metric, goal)
        finally:
            pool.shutdown()
    return result


def _fanova(done: list[tuple[Trial, float]], keys: list[str], goal: str) -> dict[str, float]:
    import optuna
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: _distribution([t.params[k] for t, _ in done]) for k in keys}
    study = optuna.create_study(direction=goal)  # in memory: nothing is written anywhere
    study.add_trials([create_trial(
        params={k: t.params[k] if _numeric([t.params[k]]) else _category(t.params[k])
                for k in keys},
        distributions=dists, value=value) for t, value in done])
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=TREES, max_depth=DEPTH,
                                                          seed=SEED)
    shares = optuna.importance.get_param_importances(study, evaluator=evaluator, params=keys,
                                                     normalize=True)
    return {k: float(shares.get(k, 0.0)) for k in keys}


def _rho(done: list[tuple[Trial, float]], key: str) -> float | None:
    """Spearman's rho of a numeric parameter with the metric; None for categoricals."""
    xs = [t.params[key] for t, _ in done]
    if not _numeric(xs) or len(set(xs)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = float(spearmanr(xs, [v for _, v in done]).statistic)
    return rho if math.isfinite(rho) else None


def lines(imp: Importances) -> list[str]:
    """The importances as text lines, for the terminal."""
    if imp.reason:
        return [imp.reason]
    out = [f"parameter importance for {imp.metric} (fANOVA over {imp.n} finished trials; "
           f"ρ: Spearman correlation, + means a larger value gives a larger {imp.metric})"]
    width = max(len(p.name) for p in imp.params)
    for p in imp.params:
        rho = "categorical" if p.rho is None else f"ρ = {p.rho:+.2f}"
        out.append(f"  {p.name:<{width}}  {p.importance * 100:5.1f}%  {rho}")
    return out
