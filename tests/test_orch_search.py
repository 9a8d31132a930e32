"""Search: grid/random/bayes generation through W&B's engine, and no duplicates in parallel."""

from __future__ import annotations

from pathlib import Path

from orch_helpers import orch_env, run_orch, starts, write_spec

from orchestrator.ledger import Ledger, Trial
import pytest

from orchestrator.search import Engine, flat_point, nested_config, param_names, plain_grid, varied


def _trial(i: int, params: dict, state: str = "finished", best: float | None = 1.0) -> Trial:
    return Trial(i, "s", i, f"h{i}", params, state, None, 0, 1, None, None, None, None, None,
                 None, None, None, None, None, None, best, {}, {}, None)


def test_grid_order_and_nested_parameters() -> None:
    params = {"model.n_head": {"values": [2, 4]},
              "optim": {"parameters": {"lr": {"values": [0.1, 0.01]}}},
              "train.seed": {"value": 7}}
    engine = Engine({"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
                     "parameters": params})
    points = engine.grid()
    assert len(points) == 4
    assert {p["model.n_head"] for p in points} == {2, 4}
    assert all(p["train.seed"] == 7 and p["optim.lr"] in (0.1, 0.01) for p in points)
    assert varied(params) == ["model.n_head", "optim.lr"]
    assert [n for n, _, _ in param_names(params)] == ["model.n_head", "optim.lr", "train.seed"]
    assert flat_point(nested_config(points[0], params), params) == points[0]


@pytest.mark.parametrize("params", [
    {"b": {"values": [1, 2]}, "a": {"values": ["x", "y", "z"]}},
    {"model.n_head": {"values": [4, 8]}, "attention.block": {"values": [16, 32]},
     "attention.qk_dim": {"values": [None, 128]}, "train.seed": {"value": 3}},
    {"optim": {"parameters": {"lr": {"values": [0.1, 0.01]}, "eps": {"value": 1e-6}}},
     "optim.name": {"values": ["adamw", "sgd"]}, "model": {"parameters": {
         "n_layer": {"values": [1, 2]}}}},
    {"x": {"values": [3e6, 3000000, 1, True, 1.0, "1"]}, "y": {"values": [[1, 2], {"k": 1}]}},
])
def test_plain_grid_is_the_engines_grid_without_the_engine(params: dict) -> None:
    # plain_grid spares `orch validate` the engine's scipy import; W&B's order must not change.
    config = {"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
              "parameters": params}
    engine, fast = Engine(config), plain_grid(params)
    slow, runs = [], []
    while (batch := engine.suggest(runs, 5)) is not None:
        slow += batch
        runs += [engine.point_run(p, "finished") for p in batch]
    assert fast is not None and fast == slow
    assert [list(p) for p in fast] == [list(p) for p in slow]  # the same key order too
    assert [[type(v) for v in p.values()] for p in fast] == \
        [[type(v) for v in p.values()] for p in slow]


def test_plain_grid_leaves_ranges_to_the_engine() -> None:
    assert plain_grid({"train.seed": {"min": 1, "max": 3}}) is None
    assert plain_grid({"a": {"values": [1, 2], "probabilities": [0.5, 0.5]}}) is None


def test_grid_skips_points_already_in_the_ledger_including_pending_and_running() -> None:
    engine = Engine({"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
                     "parameters": {"train.seed": {"values": [1, 2, 3, 4]}}})
    runs = [engine.sweep_run(_trial(1, {"train.seed": 1}, "finished")),
            engine.sweep_run(_trial(2, {"train.seed": 2}, "running", None)),
            engine.sweep_run(_trial(3, {"train.seed": 3}, "pending", None))]
    assert engine.suggest(runs, 3) == [{"train.seed": 4}]
    runs.append(engine.sweep_run(_trial(4, {"train.seed": 4}, "failed", None)))
    assert engine.suggest(runs, 1) is None  # exhausted


def test_random_draws_within_distribution() -> None:
    engine = Engine({"method": "random", "metric": {"name": "val_loss", "goal": "minimize"},
                     "parameters": {"optim.lr": {"min": 1e-4, "max": 1e-1,
                                                 "distribution": "log_uniform_values"},
                                    "train.batch_size": {"min": 8, "max": 32}}})
    points = engine.suggest([], 20)
    assert points is not None and len(points) == 20
    assert all(1e-4 <= p["optim.lr"] <= 1e-1 for p in points)
    assert all(isinstance(p["train.batch_size"], int) and 8 <= p["train.batch_size"] <= 32
               for p in points)


def test_bayes_uses_history_and_pending_runs() -> None:
    engine = Engine({"method": "bayes", "metric": {"name": "val_loss", "goal": "minimize"},
                     "parameters": {"optim.lr": {"min": 0.001, "max": 0.1}}})
    runs = [engine.sweep_run(_trial(i, {"optim.lr": lr}, "finished", loss))
            for i, (lr, loss) in enumerate([(0.001, 3.0), (0.05, 1.0), (0.1, 2.5)], 1)]
    runs.append(engine.sweep_run(_trial(4, {"optim.lr": 0.04}, "running", None)))
    points = engine.suggest(runs, 2)
    assert points is not None and len(points) == 2
    assert all(0.001 <= p["optim.lr"] <= 0.1 for p in points)
    assert points[0] != points[1]


def test_hyperband_names_the_laggard() -> None:
    engine = Engine({"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
                     "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
                     "parameters": {"train.seed": {"values": [1, 2, 3, 4]}}})
    good = [{"val_loss": 3.0}, {"val_loss": 2.0}]
    runs = [engine.sweep_run(_trial(i, {"train.seed": i}), good) for i in (1, 2, 3)]
    runs.append(engine.sweep_run(_trial(4, {"train.seed": 4}, "running", None),
                                 [{"val_loss": 5.0}]))
    assert engine.to_stop(runs) == {"4"}


def test_two_slots_never_run_the_same_point_twice(orch_home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", resources={"cpu_slots": 2},
                      parameters={"train.seed": {"values": [1, 2, 3, 4, 5, 6]}})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, {"default": {"step_time": 0.1}}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = Ledger(orch_home).trials("t")
    assert len(trials) == 6 and len({t.config_hash for t in trials}) == 6
    assert {t.slot for t in trials} == {0, 1}  # both slots were used
    seeds = [s["train.seed"] for s in starts(orch_home)]
    assert sorted(seeds) == ["1", "2", "3", "4", "5", "6"]


def test_random_and_bayes_sweeps_respect_run_cap_without_duplicates(orch_home: Path,
                                                                    tmp_path: Path) -> None:
    for method in ("random", "bayes"):
        spec = write_spec(tmp_path / f"{method}.yaml", name=method, method=method, run_cap=4,
                          resources={"cpu_slots": 2},
                          parameters={"optim.lr": {"min": 1e-4, "max": 1e-2,
                                                   "distribution": "log_uniform_values"}})
        proc = run_orch(["sweep", str(spec)], orch_env(orch_home))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        trials = Ledger(orch_home).trials(method)
        assert len(trials) == 4 and all(t.state == "finished" for t in trials)
        assert len({t.config_hash for t in trials}) == 4
        # Resuming a capped sweep runs nothing more.
        again = run_orch(["sweep", str(spec)], orch_env(orch_home))
        assert again.returncode == 0 and len(Ledger(orch_home).trials(method)) == 4
