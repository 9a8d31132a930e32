"""The second embedded search engine: Optuna's TPE sampler and its asynchronous
successive halving (ASHA) pruner, behind the same boundary as search.py's W&B engine.

The ledger stays the one source of truth: every proposal and every stop decision rebuilds an
in-memory Optuna study from the ledger's trials (finished ones COMPLETE with their metric,
early-stopped ones PRUNED with their validation curve, pending and running ones RUNNING so the
sampler's constant liar keeps parallel slots apart, failed and invalid ones FAIL). The sampler is
seeded from the sweep's seed and the number of known trials, so a resumed sweep proposes what
the uninterrupted one would have, and never a point it already holds.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from orchestrator.ledger import Trial
from orchestrator.search import Engine, param_names
from orchestrator.states import TrialState

OPTUNA_METHODS = ("tpe",)  # cmaes would need the `cmaes` package, not a dependency
OPTUNA_EARLY_TERMINATE = ("asha",)
BOUNDED = ("uniform", "int_uniform", "log_uniform_values", "log_uniform", "q_uniform",
           "q_log_uniform_values", "categorical")
REDRAWS = 50  # draws per proposal before a space counts as having nothing new left


def _optuna() -> Any:
    """Import Optuna quietly (its experimental-feature warnings are noise in a sweep's log)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class Run:
    """A ledger trial (or a point that is not one) as the Optuna engine sees it."""

    name: str
    point: dict[str, Any]
    state: TrialState
    value: float | None = None
    history: list[float] = field(default_factory=list)  # the metric at each validation


def distribution_error(name: str, param: dict[str, Any]) -> str | None:
    """Why a W&B parameter cannot be an Optuna distribution (unbounded ones); None if it can."""
    if "value" in param or "values" in param:
        return None
    dist = param.get("distribution") or "uniform"
    if dist not in BOUNDED or "min" not in param or "max" not in param:
        return (f"parameter {name}: distribution {dist} has no bounds Optuna's samplers can "
                f"search; use values, or min/max with one of {', '.join(BOUNDED[:-1])}")
    return None


def distributions(parameters: dict[str, Any]) -> dict[str, Any]:
    """The W&B parameters as Optuna distributions by dotted name (fixed `value`s excluded).

    A `values` list becomes a categorical over its indices, so lists and dicts can be values.
    """
    optuna = _optuna()
    d = optuna.distributions
    out: dict[str, Any] = {}
    for name, p, _ in param_names(parameters):
        if "value" in p:
            continue
        if "values" in p:
            out[name] = d.CategoricalDistribution(list(range(len(p["values"]))))
            continue
        err = distribution_error(name, p)
        if err:
            raise ValueError(err)
        lo, hi = p["min"], p["max"]
        dist = p.get("distribution") or ("int_uniform" if isinstance(lo, int) and isinstance(
            hi, int) else "uniform")
        q = p.get("q")
        if dist == "int_uniform":
            out[name] = d.IntDistribution(int(lo), int(hi), step=int(q or 1))
        elif dist == "log_uniform":  # W&B's old form: min and max are natural logs
            out[name] = d.FloatDistribution(math.exp(lo), math.exp(hi), log=True)
        elif dist in ("log_uniform_values", "q_log_uniform_values"):
            out[name] = d.FloatDistribution(float(lo), float(hi), log=True)
        elif dist == "q_uniform":
            out[name] = d.FloatDistribution(float(lo), float(hi), step=float(q or 1.0))
        else:
            out[name] = d.FloatDistribution(float(lo), float(hi))
    return out


def space_size(parameters: dict[str, Any]) -> int | None:
    """How many distinct points a space of only values and integer ranges has; None if
    continuous."""
    size = 1
    for dist in distributions(parameters).values():
        if hasattr(dist, "choices"):
            size *= len(dist.choices)
        elif isinstance(dist.low, int) and dist.step is not None and not getattr(dist, "log", 0):
            size *= (dist.high - dist.low) // dist.step + 1
        else:
            return None
    return size


def _key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, default=str)


class OptunaEngine(Engine):
    """Suggests points (TPE) and early stops (ASHA) from a study rebuilt each time."""

    def __init__(self, search_config: dict[str, Any], seed: int = 0) -> None:
        super().__init__(search_config)
        self.seed = seed
        self.metric: str = search_config["metric"]["name"]
        self.goal: str = search_config["metric"].get("goal", "minimize")
        self.dists = distributions(self.parameters)
        self.fixed = {n: p["value"] for n, p, _ in param_names(self.parameters) if "value" in p}
        self.values = {n: p["values"] for n, p, _ in param_names(self.parameters)
                       if "values" in p}
        self.size = space_size(self.parameters)

    # -- the engine boundary ----------------------------------------------------------------------

    def sweep_run(self, trial: Trial, history: list[dict[str, Any]] | None = None) -> Run:
        """A ledger trial as a Run; `history` is its validation metrics."""
        curve = [h.get(self.metric) for h in history or []]
        return Run(name=str(trial.id), point=dict(trial.params), state=trial.state,
                   value=trial.best_metric,
                   history=[v for v in curve if isinstance(v, (int, float))])

    def point_run(self, point: dict[str, Any], state: TrialState) -> Run:
        """A point that is not a ledger trial (an invalid or repeated point) as a Run."""
        return Run(name="", point=dict(point), state=state)

    def suggest(self, runs: list[Any], n: int) -> list[dict[str, Any]] | None:
        """Up to `n` new points; None when a finite space holds no untried point."""
        known = {_key(r.point) for r in runs}
        if self.size is not None and len(known) >= self.size:
            return None
        study = self._study(runs, seed=self.seed * 1_000_003 + len(runs))
        found: list[dict[str, Any]] = []
        for _ in range(n):
            for _ in range(REDRAWS):
                trial = study.ask(self.dists)
                point = self._point(trial.params)
                key = _key(point)
                if key not in known:
                    known.add(key)
                    found.append(point)  # stays RUNNING in the study: the liar spreads the rest
                    break
                # A repeat: tell the sampler what that point gave, as Optuna's FAQ does.
                same = next((r for r in runs if _key(r.point) == key), None)
                if same is None or same.state in (TrialState.PENDING, TrialState.RUNNING):
                    continue  # taken by a trial in flight: left running, as that trial is
                if same.state == TrialState.FINISHED and same.value is not None:
                    study.tell(trial, same.value)
                else:
                    study.tell(trial, state=_optuna().trial.TrialState.FAIL)
            else:
                # The sampler keeps to known points (a small space nearly done): the first
                # untried point in the space's order, so the sweep still covers it.
                left = self._untried(known)
                if left is None:
                    break
                known.add(_key(left))
                found.append(left)
        return found

    def to_stop(self, runs: list[Any]) -> set[str]:
        """Names of running runs that ASHA stops at the validation they just reported."""
        et = self.config.get("early_terminate") or {}
        if et.get("type") != "asha":
            return set()
        optuna = _optuna()
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=int(et.get("min_iter", 1)), reduction_factor=int(et.get("eta", 3)),
            min_early_stopping_rate=int(et.get("s", 0)), bootstrap_count=0)
        rungs = _rungs(int(et.get("min_iter", 1)), int(et.get("eta", 3)))
        # ASHA judges a trial only at a rung: no study to build while none has just reached one.
        if not any(r.state == TrialState.RUNNING and len(r.history) in rungs for r in runs):
            return set()
        study = self._study(runs, seed=self.seed, rungs=rungs)
        stop = set()
        for frozen in study.get_trials(deepcopy=False):
            name = frozen.user_attrs.get("name")
            if frozen.state == optuna.trial.TrialState.RUNNING and frozen.intermediate_values \
                    and name and pruner.prune(study, frozen):
                stop.add(name)
        return stop

    def _untried(self, known: set[str]) -> dict[str, Any] | None:
        """The first point of a finite space no run holds; None for a continuous space."""
        if self.size is None or self.size > 100_000:
            return None
        axes = [(name, list(d.choices) if hasattr(d, "choices")
                 else list(range(d.low, d.high + 1, d.step))) for name, d in self.dists.items()]
        for combo in itertools.product(*(values for _, values in axes)):
            point = self._point(dict(zip((name for name, _ in axes), combo)))
            if _key(point) not in known:
                return point
        return None

    # -- the study rebuilt from the ledger --------------------------------------------------------

    def _study(self, runs: list[Run], seed: int, rungs: list[int] | None = None) -> Any:
        optuna = _optuna()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant_liar is marked experimental
            sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        study = optuna.create_study(sampler=sampler, direction=self.goal)
        for run in runs:
            frozen = self._frozen(run, rungs or [])
            if frozen is not None:
                study.add_trial(frozen)
        return study

    def _frozen(self, run: Run, rungs: list[int]) -> Any:
        """One Run as an Optuna trial; None for a point outside the space (a changed spec)."""
        optuna = _optuna()
        states = optuna.trial.TrialState
        try:
            params = self._params(run.point)
        except (ValueError, KeyError):
            return None
        curve = {i + 1: v for i, v in enumerate(run.history)}  # one step per validation
        value = run.value if run.value is not None and math.isfinite(run.value) else None
        if run.state == TrialState.FINISHED and value is not None:
            state = states.COMPLETE
        elif run.state == TrialState.STOPPED and (curve or value is not None):
            state, value = states.PRUNED, None
            curve = curve or {1: run.value}
        elif run.state in (TrialState.PENDING, TrialState.RUNNING):
            state, value = states.RUNNING, None
        else:
            state, value, curve = states.FAIL, None, {}
        # ASHA's memory: the value each rung saw, for every rung the trial passed before its
        # latest validation (the latest one is the pruner's to judge now).
        last = max(curve) if curve else 0
        system = {f"completed_rung_{k}": curve[r] for k, r in enumerate(rungs)
                  if r in curve and (r < last or state != states.RUNNING)}
        return optuna.trial.create_trial(
            state=state, value=value, params=params, distributions=self.dists,
            intermediate_values=curve, user_attrs={"name": run.name}, system_attrs=system)

    def _params(self, point: dict[str, Any]) -> dict[str, Any]:
        """A flat point as Optuna's param values (`values` entries as their indices)."""
        out = {}
        for name, dist in self.dists.items():
            value = point[name]
            if name in self.values:
                out[name] = next(i for i, v in enumerate(self.values[name]) if v == value)
            else:
                if not dist._contains(dist.to_internal_repr(value)):
                    raise ValueError(f"{name}={value} is outside the space")
                out[name] = value
        return out

    def _point(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's param values as a flat point, in the spec's parameter order."""
        out: dict[str, Any] = {}
        for name, p, _ in param_names(self.parameters):
            if name in self.fixed:
                out[name] = self.fixed[name]
            elif name in self.values:
                out[name] = self.values[name][params[name]]
            else:
                value = params[name]
                q = p.get("q")
                if q and p.get("distribution") == "q_log_uniform_values":
                    value = min(max(round(value / q) * q, p["min"]), p["max"])
                out[name] = value
        return out


def _rungs(min_iter: int, eta: int, count: int = 12) -> list[int]:
    """The validation counts at which ASHA compares trials: min_iter * eta^k."""
    return [min_iter * eta ** k for k in range(count)]


def make_engine(search_config: dict[str, Any], seed: int = 0) -> Engine:
    """The engine a search config's method names: Optuna's for tpe, else W&B's."""
    if search_config["method"] in OPTUNA_METHODS:
        return OptunaEngine(search_config, seed)
    return Engine(search_config)


def wandb_view(search: dict[str, Any]) -> dict[str, Any]:
    """The search config as W&B's schema checks can read it: Optuna's methods and ASHA are not
    W&B's, so those parts are checked by `spec_problems` instead."""
    view = dict(search)
    if view.get("method") in OPTUNA_METHODS:
        view["method"] = "random"
    if (view.get("early_terminate") or {}).get("type") in OPTUNA_EARLY_TERMINATE:
        view.pop("early_terminate")
    return view


def spec_problems(spec: Any, doc: Any) -> list[str]:
    """Paragraphs about Optuna's methods and ASHA in a spec: the W&B backend runs neither,
    ASHA pairs with Optuna's samplers (hyperband with W&B's), and TPE needs bounded spaces."""
    problems = []
    et = spec.early_terminate or {}
    optuna_method = spec.method in OPTUNA_METHODS
    if spec.tracking.backend == "wandb" and (optuna_method or et.get("type") == "asha"):
        what = f"method {spec.method}" if optuna_method else "early_terminate type asha"
        loc = ("method",) if optuna_method else ("early_terminate", "type")
        problems.append(doc.error(loc, f"{what} is Optuna's, run by orch's embedded engine, "
                                  "but tracking.backend is wandb, whose cloud sweeps offer only "
                                  "grid, random and bayes with hyperband; use `tracking.backend: "
                                  "local` for tpe and asha, or a W&B method"))
    if et.get("type") == "asha":
        if not optuna_method:
            problems.append(doc.error(("early_terminate", "type"), "asha stops trials for "
                                      "Optuna's sampler (method tpe); with grid, random "
                                      "or bayes use `type: hyperband`"))
        extra = sorted(set(et) - {"type", "min_iter", "eta", "s"})
        bad = [k for k in ("min_iter", "eta") if k in et and not (
            isinstance(et[k], int) and et[k] >= (2 if k == "eta" else 1))]
        if extra or bad:
            problems.append(doc.error(("early_terminate",), "asha takes min_iter (validations "
                                      "before the first rung, an integer >= 1), eta (the "
                                      "reduction factor, an integer >= 2) and s (rungs skipped); "
                                      f"got {', '.join(extra + bad)}"))
    elif optuna_method and et:
        problems.append(doc.error(("early_terminate", "type"), f"method {spec.method} stops "
                                  "trials with `type: asha` (Optuna's successive halving), not "
                                  f"{et.get('type')}"))
    if optuna_method:
        for name, p, loc in param_names(spec.parameters):
            err = distribution_error(name, p) if isinstance(p, dict) else None
            if err:
                problems.append(doc.error(loc, err))
    return problems
