"""Which search method reaches a good configuration with the least compute, on a replayed table.

    python benchmarks/search_efficiency.py [benchmarks/tables/tiny_grid.json] [--seeds 20]

Each method searches the recorded grid's space (its `values` lists), one trial at a time, and
each trial is answered from the table (the replay launcher's recording): its validations arrive
one by one, so hyperband and ASHA can stop it, and a trial costs the trainer steps it reached.
The engines are the ones `orch sweep` runs (orchestrator/search.py, orchestrator/optuna_search.py),
driven here without the run loop's processes so that 20 seeds of 6 methods take minutes. A
proposal of a point already tried costs nothing and is shown to the engine as taken, as
run/suggest.py does. Printed per method (mean and median over seeds): the steps spent until the
best val_loss found is within 1% of the table's best (as a share of the grid's compute; never:
the search ended first), and the best found after 25% and 50% of the grid's compute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from orchestrator.launch.replay import point_key
from orchestrator.optuna_search import make_engine
from orchestrator.search import Engine
from orchestrator.states import TrialState

HERE = Path(__file__).resolve().parent
METRIC = "val_loss"
METHODS = {"grid": ("grid", None), "random": ("random", None), "bayes": ("bayes", None),
           "bayes+hyperband": ("bayes", {"type": "hyperband", "min_iter": 2, "eta": 3}),
           "tpe": ("tpe", None), "tpe+asha": ("tpe", {"type": "asha", "min_iter": 2, "eta": 3})}


def cpu_features() -> str:
    """The CPU this ran on: model name, logical CPUs and its vector extensions (numpy's)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in flags]
    return (f"{model}, {os.cpu_count()} logical CPUs ({' '.join(vector) or 'no flags read'}), "
            f"Python {platform.python_version()}")


def load(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """(spec, trials by point key, parameter names) of a table file."""
    data = json.loads(path.read_text())
    names = sorted(data["spec"]["parameters"])
    return data["spec"], {point_key(t["params"], names): t for t in data["trials"]}, names


def run_once(method: str, seed: int, spec: dict[str, Any], table: dict[str, dict[str, Any]],
             names: list[str], budget: float) -> list[tuple[float, float]]:
    """One search to the grid's compute: (steps spent, best val_loss so far) after each trial."""
    engine_method, early = METHODS[method]
    config = {"method": engine_method, "metric": {"name": METRIC, "goal": "minimize"},
              "parameters": spec["parameters"]}
    if early:
        config["early_terminate"] = early
    random.seed(seed)
    np.random.seed(seed)  # W&B's random and bayes draw from numpy's global generator
    engine = make_engine(config, seed=seed) if engine_method == "tpe" else Engine(config)
    done: list[Any] = []  # trials as the engine reads them
    tried: set[str] = set()
    spent, best, trace = 0.0, float("inf"), []
    target = min(t["best"][METRIC] for t in table.values() if t["state"] == "finished") * 1.01
    # Past half the grid's compute with the target reached, the summary has all it reads.
    while spent < budget and not (spent >= budget / 2 and best <= target):
        point = _propose(engine, done, tried, names)
        if point is None:
            break
        tried.add(point_key(point, names))
        row = table[point_key(point, names)]
        curve = [(s, v[0]) for s, v in row["curve"] if v[0] is not None]
        seen: list[float] = []
        state = TrialState.FINISHED if row["state"] == "finished" else TrialState.FAILED
        steps = 0
        for step, value in curve:
            seen.append(value)
            steps = step
            if early and len(seen) < len(curve):
                live = _trial(len(done), point, TrialState.RUNNING, seen)
                runs = [engine.sweep_run(t, h) for t, h in done] + \
                    [engine.sweep_run(live, [{METRIC: v} for v in seen])]
                if str(len(done)) in engine.to_stop(runs):
                    state = TrialState.STOPPED
                    break
        spent += steps
        best = min([best, *seen])
        trace.append((spent, best))
        done.append((_trial(len(done), point, state, seen), [{METRIC: v} for v in seen]))
    return trace


def _trial(i: int, point: dict[str, Any], state: TrialState, seen: list[float]) -> Any:
    # The fields both engines' sweep_run read of a ledger Trial.
    return SimpleNamespace(id=i, params=point, state=state,
                           best_metric=min(seen) if seen else None)


def _propose(engine: Any, done: list[Any], tried: set[str],
             names: list[str]) -> dict[str, Any] | None:
    """The engine's next untried point, as run/suggest.py asks: repeats shown as taken."""
    extra: list[Any] = []
    for _ in range(20):
        runs = [engine.sweep_run(t, h) for t, h in done] + extra
        points = engine.suggest(runs, 1)
        if not points:
            return None
        if point_key(points[0], names) not in tried:
            return points[0]
        extra.append(engine.point_run(points[0], TrialState.PENDING))
    return None


def summarize(traces: list[list[tuple[float, float]]], target: float, budget: float
              ) -> dict[str, Any]:
    """Steps to within 1% of the table's best, and the best found at 25% and 50% of budget."""
    def reach(trace: list[tuple[float, float]]) -> float | None:
        return next((s for s, b in trace if b <= target), None)

    def best_at(trace: list[tuple[float, float]], share: float) -> float:
        return min((b for s, b in trace if s <= share * budget), default=float("nan"))

    reached = [reach(t) for t in traces]
    hit = [r / budget for r in reached if r is not None]
    return {"reached": len(hit), "median_share": statistics.median(hit) if hit else None,
            "mean_share": statistics.mean(hit) if hit else None,
            "best25": statistics.median(best_at(t, 0.25) for t in traces),
            "best50": statistics.median(best_at(t, 0.50) for t in traces)}


def main() -> None:
    """Run every method over the seeds and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("table", nargs="?", default=str(HERE / "tables" / "tiny_grid.json"))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bayes-seeds", type=int, default=None,
                    help="fewer seeds for the bayes methods (their GP fit costs seconds a trial)")
    args = ap.parse_args()
    spec, table, names = load(Path(args.table))
    finished = [t for t in table.values() if t["state"] == "finished"]
    table_best = min(t["best"][METRIC] for t in finished)
    budget = sum(t["curve"][-1][0] for t in table.values() if t["curve"])
    target = table_best * 1.01
    print(f"table {Path(args.table).name}: {len(table)} trials, best {METRIC} {table_best:.4f}, "
          f"grid compute {budget:.0f} trainer steps; target <= {target:.4f}")
    print(f"CPU: {cpu_features()}")
    print(f"| method | seeds reaching 1% | steps to 1% (median, share of grid) | "
          f"(mean) | best at 25% | best at 50% | wall s |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        start = time.perf_counter()
        seeds = 1 if method == "grid" else args.seeds  # grid's order has no seed
        if method.startswith("bayes") and args.bayes_seeds:
            seeds = args.bayes_seeds
        traces = [run_once(method, s, spec, table, names, budget) for s in range(seeds)]
        r = summarize(traces, target, budget)
        share = "never" if r["median_share"] is None else f"{r['median_share']:.0%}"
        mean = "" if r["mean_share"] is None else f"{r['mean_share']:.0%}"
        print(f"| {method} | {r['reached']}/{seeds} | {share} | {mean} | {r['best25']:.4f} | "
              f"{r['best50']:.4f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
