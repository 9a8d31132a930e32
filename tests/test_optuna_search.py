"""Optuna as the second embedded engine: TPE proposals from a study rebuilt from the ledger,
ASHA stops, resume without repeats, and the W&B backend's refusal."""

from __future__ import annotations

import json
import math
from pathlib import Path

from orch_helpers import orch_env, run_orch, starts, write_spec

from orchestrator.ledger import Ledger
from orchestrator.optuna_search import OptunaEngine, Run, distributions
from orchestrator.states import TrialState

MIN = {"name": "val_loss", "goal": "minimize"}
SPACE = {"optim.lr": {"min": 1e-4, "max": 1e-1, "distribution": "log_uniform_values"},
         "model.n_layer": {"values": [1, 2, 3]},
         "model.d_model": {"min": 32, "max": 128, "q": 32, "distribution": "int_uniform"},
         "optim.weight_decay": {"min": 0.0, "max": 0.3}}


def _value(p: dict) -> float:
    return (math.log10(p["optim.lr"]) + 2.5) ** 2 + 0.1 * p["model.n_layer"]


def test_tpe_proposes_inside_the_space_without_repeats_beside_pending_trials() -> None:
    engine = OptunaEngine({"method": "tpe", "metric": MIN, "parameters": SPACE})
    runs: list[Run] = []
    for i in range(15):  # two slots: half the known trials are still pending each round
        for p in engine.suggest(runs, 2) or []:
            runs.append(Run(str(len(runs)), p, TrialState.PENDING))
        for r in runs[:-2]:
            if r.state == TrialState.PENDING:
                r.state, r.value = TrialState.FINISHED, _value(r.point)
    points = [r.point for r in runs]
    assert len(points) == 30
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 30
    for p in points:
        assert 1e-4 <= p["optim.lr"] <= 1e-1 and p["model.n_layer"] in (1, 2, 3)
        assert p["model.d_model"] in (32, 64, 96, 128) and 0.0 <= p["optim.weight_decay"] <= 0.3
    # TPE, once past its random start-up trials, concentrates near the optimum (lr 10^-2.5).
    late = sorted(abs(math.log10(p["optim.lr"]) + 2.5) for p in points[15:])
    early = sorted(abs(math.log10(p["optim.lr"]) + 2.5) for p in points[:10])
    assert late[len(late) // 2] < early[len(early) // 2]


def test_a_finite_space_ends_once_every_point_is_known() -> None:
    params = {"a": {"values": [1, 2]}, "b": {"min": 0, "max": 2, "distribution": "int_uniform"}}
    engine = OptunaEngine({"method": "tpe", "metric": MIN, "parameters": params})
    runs: list[Run] = []
    while (found := engine.suggest(runs, 4)) is not None:
        assert found, "a space with untried points must propose one"
        runs += [Run(str(len(runs)), p, TrialState.FINISHED, 1.0) for p in found]
    assert sorted((r.point["a"], r.point["b"]) for r in runs) == [
        (a, b) for a in (1, 2) for b in (0, 1, 2)]


def test_wandb_distributions_map_to_optuna_ones() -> None:
    d = distributions(SPACE)
    assert d["optim.lr"].log and d["optim.lr"].low == 1e-4
    assert d["model.d_model"].step == 32 and d["model.n_layer"].choices == (0, 1, 2)


def test_asha_stops_the_trial_behind_its_rung() -> None:
    engine = OptunaEngine({"method": "tpe", "metric": MIN, "parameters": {
        "train.seed": {"values": list(range(8))}},
        "early_terminate": {"type": "asha", "min_iter": 1, "eta": 2}})
    runs = [Run(str(i), {"train.seed": i}, TrialState.FINISHED, 1.0, [2.0, 1.5, 1.2, 1.0])
            for i in range(4)]
    runs.append(Run("bad", {"train.seed": 5}, TrialState.RUNNING, None, [2.0, 3.0]))
    runs.append(Run("good", {"train.seed": 6}, TrialState.RUNNING, None, [2.0, 1.4]))
    assert engine.to_stop(runs) == {"bad"}


def test_tpe_sweep_runs_parallel_slots_and_resumes_without_repeats(
        orch_home: Path, tmp_path: Path) -> None:
    params = {"train.seed": {"values": list(range(1, 13))}, "optim.lr": {"values": [1e-3, 1e-2]}}
    spec = write_spec(tmp_path / "s.yaml", method="tpe", run_cap=8, parameters=params,
                      resources={"cpu_slots": 2})
    script = {"key": "train.seed", "default": {"curve": [3.0, 2.0]}}
    first = run_orch(["sweep", str(spec), "--max-trials", "3"], orch_env(orch_home, script))
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_orch(["sweep", str(spec)], orch_env(orch_home, script))
    assert second.returncode == 0, second.stdout + second.stderr
    trials = Ledger(orch_home).trials("t")
    assert [t.state for t in trials] == ["finished"] * 8
    started = [(s["train.seed"], s["optim.lr"]) for s in starts(orch_home)]
    assert len(started) == 8 and len(set(started)) == 8  # no point ran twice


def test_asha_sweep_stops_a_lagging_trial(orch_home: Path, tmp_path: Path) -> None:
    script = {"key": "train.seed", "default": {"curve": [3.0, 2.0, 1.0]},
              "cases": {"4": {"step_time": 0.3, "curve": [5.0] * 30}}}
    spec = write_spec(tmp_path / "s.yaml", method="tpe", run_cap=6,
                      parameters={"train.seed": {"values": [1, 2, 3, 4, 5, 6]}},
                      resources={"cpu_slots": 2},
                      early_terminate={"type": "asha", "min_iter": 1, "eta": 2})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.params["train.seed"]: t for t in Ledger(orch_home).trials("t")}
    assert trials[4].state == "stopped" and "asha" in (trials[4].reason or "")
    assert all(trials[s].state == "finished" for s in (1, 2, 3, 5, 6))


def test_wandb_backend_refuses_optuna_methods(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", method="tpe", run_cap=4,
                      tracking={"backend": "wandb"})
    proc = run_orch(["validate", str(spec)], orch_env(orch_home))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "method tpe is Optuna's" in proc.stderr and "Traceback" not in proc.stderr
    asha = write_spec(tmp_path / "a.yaml", method="bayes", run_cap=4,
                      early_terminate={"type": "asha", "min_iter": 1, "eta": 2})
    proc = run_orch(["validate", str(asha)], orch_env(orch_home))
    assert proc.returncode == 2 and "with grid, random or bayes use `type: hyperband`" in \
        proc.stderr
    assert not starts(orch_home)

