"""The embedded search engine: W&B's open-source `sweeps` (next_runs, stop_runs) over the ledger.

Ledger trials become `SweepRun`s (pending and running ones included, so parallel slots never get
the same point twice); the engine's suggestions come back as flat {dotted.key: value} points.
Parameters may be written flat (`model.n_head`) or W&B-nested (`model: {parameters: {...}}`);
both become dotted trainer keys.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import warnings
from typing import Any

import yaml

from orchestrator.ledger import Trial
from orchestrator.states import TrialState

# How the ledger's states read to W&B's engine (its RunState values). A trial stopped early by
# hyperband has a real, partial metric history, so it counts as finished with that history (as
# on W&B); every other unsuccessful end is a failure the bayes engine imputes the worst metric for.
ENGINE_STATE = {TrialState.PENDING: "pending", TrialState.RUNNING: "running",
                TrialState.FINISHED: "finished", TrialState.STOPPED: "finished",
                TrialState.DIVERGED: "failed", TrialState.FAILED: "failed",
                TrialState.OOM: "failed", TrialState.TIMEOUT: "failed",
                TrialState.KILLED: "killed", TrialState.INVALID: "failed"}


def _sweeps() -> Any:
    """Import `sweeps` lazily (it pulls in scipy and sklearn) and quiet its pydantic warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def param_names(parameters: dict[str, Any], prefix: str = "",
                loc: tuple[Any, ...] = ("parameters",)) -> list[tuple[str, dict[str, Any],
                                                                       tuple[Any, ...]]]:
    """(dotted name, W&B parameter dict, YAML location) for every leaf parameter."""
    out = []
    for key, param in parameters.items():
        name = f"{prefix}{key}"
        if isinstance(param, dict) and "parameters" in param and isinstance(
                param["parameters"], dict):
            out.extend(param_names(param["parameters"], name + ".",
                                   (*loc, key, "parameters")))
        else:
            out.append((name, param, (*loc, key)))
    return out


def varied(parameters: dict[str, Any]) -> list[str]:
    """The names of the parameters that take more than one value (table columns)."""
    return [name for name, p, _ in param_names(parameters)
            if not ("value" in p or ("values" in p and len(p.get("values") or []) == 1))]


def flat_point(run_config: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """A SweepRun config ({name: {value: v}}) as flat dotted trainer keys."""
    out: dict[str, Any] = {}

    def walk(value: Any, spec: dict[str, Any], prefix: str) -> None:
        if "parameters" in spec and isinstance(value, dict):
            for key, sub in spec["parameters"].items():
                if key in value:
                    walk(value[key], sub, f"{prefix}.{key}")
        else:
            # numpy scalars from the bayes and q_ samplers: plain Python for JSON and SQLite
            out[prefix] = value.item() if hasattr(value, "item") else value

    for key, spec in parameters.items():
        if key in run_config:
            walk(run_config[key]["value"], spec, key)
    return out


def nested_config(point: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `flat_point`: a ledger point in the SweepRun config form."""
    config: dict[str, Any] = {}

    def build(spec: dict[str, Any], prefix: str) -> Any:
        if "parameters" in spec:
            return {k: build(s, f"{prefix}.{k}") for k, s in spec["parameters"].items()}
        return point.get(prefix)

    for key, spec in parameters.items():
        config[key] = {"value": build(spec, key)}
    return config


def _value_hash(value: Any) -> str:
    # W&B's grid identity of a value (sweeps.grid_search.yaml_hash): 3e6 and 3000000 are one.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return hashlib.md5(yaml.dump(value, default_flow_style=True, sort_keys=True)
                       .encode("ascii")).hexdigest()


def plain_parameter(param: Any) -> bool:
    """A W&B parameter of only `value` or a non-empty list of `values`."""
    return isinstance(param, dict) and (set(param) == {"value"} or (
        set(param) == {"values"} and isinstance(param["values"], list) and bool(param["values"])))


def plain_grid(parameters: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every point of a grid of only `values` and `value` parameters, in W&B's order.

    The same points as `sweeps.next_runs` (tests hold them equal), without importing its
    scipy-based parameter classes, which cost seconds on every `orch validate`. None for any
    other grid (int ranges, probabilities, explicit distributions): the engine enumerates those.
    """
    leaves = param_names(parameters)
    if not leaves or not all(plain_parameter(p) for _, p, _ in leaves):
        return None
    # W&B walks the parameters sorted by key at every nesting level, the first varying slowest.
    path = {name: tuple(str(k) for k in loc[1::2]) for name, _, loc in leaves}
    axes = sorted((path[name], name, p["values"]) for name, p, _ in leaves if "values" in p)
    choices = [{_value_hash(v): v for v in values} for _, _, values in axes]  # the last one wins
    points = []
    for combo in itertools.product(*choices):  # a value repeated in a list is one point
        picked = {name: choice[h] for (_, name, _), choice, h in zip(axes, choices, combo)}
        points.append({name: picked[name] if "values" in p else p["value"]
                       for name, p, _ in leaves})
    return points


class Engine:
    """Suggests points and early stops for one sweep."""

    def __init__(self, search_config: dict[str, Any]) -> None:
        self.config = search_config
        self.parameters: dict[str, Any] = search_config["parameters"]
        self.method: str = search_config["method"]

    def sweep_run(self, trial: Trial, history: list[dict[str, Any]] | None = None) -> Any:
        """A ledger trial as the engine's SweepRun; `history` is its validation metrics."""
        sweeps = _sweeps()
        metric = self.config["metric"]["name"]
        summary = {metric: trial.best_metric} if trial.best_metric is not None else {}
        return sweeps.SweepRun(name=str(trial.id), state=ENGINE_STATE[trial.state],
                               config=nested_config(trial.params, self.parameters),
                               history=history or [], summary_metrics=summary)

    def point_run(self, point: dict[str, Any], state: TrialState) -> Any:
        """A SweepRun for a point that is not a ledger trial (an invalid or repeated point),
        as if it were a trial in `state`."""
        return _sweeps().SweepRun(state=ENGINE_STATE[state],
                                  config=nested_config(point, self.parameters))

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, in W&B's order."""
        plain = plain_grid(self.parameters)
        if plain is not None:
            return plain
        sweeps = _sweeps()
        points: list[dict[str, Any]] = []
        runs: list[Any] = []
        while True:
            batch = sweeps.next_runs(self.config, runs, validate=False, n=256)
            for run in batch:
                if run is None:
                    return points
                runs.append(run)
                points.append(flat_point(run.config, self.parameters))

    def sample(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """`n` points drawn from the parameters' distributions as W&B's random search draws
        them (its inverse CDFs), from a seeded generator so a check gives the same answer twice.
        Bayes starts from the same distributions, so this is a sample of what either proposes."""
        _sweeps()  # quiets the import's warning
        from sweeps.params import HyperParameterSet

        params = HyperParameterSet.from_config(self.parameters)
        rng = random.Random(seed)
        points = []
        for _ in range(n):
            for param in params:
                param.value = param.ppf(rng.uniform(0.0, 1.0))
            points.append(flat_point(params.to_config(), self.parameters))
        return points

    def suggest(self, runs: list[Any], n: int) -> list[dict[str, Any]] | None:
        """Up to `n` new points given every known run; None when a grid is exhausted."""
        sweeps = _sweeps()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bayes' GP fit warns on tiny histories
            batch = sweeps.next_runs(self.config, runs, validate=False, n=n)
        found = [flat_point(r.config, self.parameters) for r in batch if r is not None]
        if not found and self.method == "grid":
            return None
        return found

    def to_stop(self, runs: list[Any]) -> set[str]:
        """Names of running runs that hyperband says to stop."""
        if not self.config.get("early_terminate"):
            return set()
        sweeps = _sweeps()
        return {r.name for r in sweeps.stop_runs(self.config, runs, validate=False)}
