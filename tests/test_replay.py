"""The replay launcher: a recorded sweep's curves answer a new sweep's trials without a program."""

from __future__ import annotations

import json
from pathlib import Path

from orch_helpers import orch_env, run_orch, starts, write_spec

from orchestrator.launch.replay import from_ledger, from_table, point_key, to_table
from orchestrator.ledger import Ledger

SCRIPT = {"key": "train.seed", "default": {"curve": [3.0, 2.0, 1.5]},
          "cases": {"2": {"curve": [2.5, 1.2, 1.1]}, "3": {"curve": [4.0, 3.5, 3.4]},
                    "4": {"curve": [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]}}}
SEEDS = {"train.seed": {"values": [1, 2, 3, 4]}}


def _curves(home: Path, sweep: str) -> dict[int, list[float]]:
    ledger = Ledger(home)
    return {t.params["train.seed"]: [v.metrics["val_loss"] for v in ledger.history(t)]
            for t in ledger.trials(sweep)}


def _record(home: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "rec.yaml", name="rec", parameters=SEEDS)
    proc = run_orch(["sweep", str(spec)], orch_env(home, SCRIPT))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_replay_reproduces_the_recorded_curves_without_running_a_program(
        orch_home: Path, tmp_path: Path) -> None:
    _record(orch_home, tmp_path)
    ran = len(starts(orch_home))
    spec = write_spec(tmp_path / "re.yaml", name="re", parameters=SEEDS,
                      launcher={"type": "replay", "from": "rec"})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, {"default": {"mode": "crash"}}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(starts(orch_home)) == ran  # nothing ran: a crashing program was never started
    assert _curves(orch_home, "re") == _curves(orch_home, "rec")
    replayed = {t.params["train.seed"]: t for t in Ledger(orch_home).trials("re")}
    assert replayed[2].state == "finished" and replayed[2].best_metric == 1.1


def test_replay_of_a_point_the_recording_lacks_is_an_error_naming_it(
        orch_home: Path, tmp_path: Path) -> None:
    _record(orch_home, tmp_path)
    spec = write_spec(tmp_path / "re.yaml", name="re",
                      parameters={"train.seed": {"values": [1, 9]}},
                      launcher={"type": "replay", "from": "rec"})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, SCRIPT))
    assert proc.returncode == 1
    assert "has no trial at train.seed=9" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_replay_honours_early_termination(orch_home: Path, tmp_path: Path) -> None:
    _record(orch_home, tmp_path)
    spec = write_spec(tmp_path / "re.yaml", name="re", method="tpe", run_cap=4,
                      parameters=SEEDS, launcher={"type": "replay", "from": "rec"},
                      early_terminate={"type": "asha", "min_iter": 1, "eta": 2})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, SCRIPT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.params["train.seed"]: t for t in Ledger(orch_home).trials("re")}
    curves = _curves(orch_home, "re")
    stopped = [s for s, t in trials.items() if t.state == "stopped"]
    assert stopped, "asha stopped none of the replayed trials"
    for s in stopped:  # cut short after fewer validations than recorded
        assert len(curves[s]) < len(_curves(orch_home, "rec")[s])


def test_a_table_file_round_trips_the_recording(orch_home: Path, tmp_path: Path) -> None:
    _record(orch_home, tmp_path)
    recorded = from_ledger(Ledger(orch_home), "rec")
    table = tmp_path / "t.json"
    table.write_text(json.dumps(to_table(recorded, ["val_loss"], {"sweep": "rec"})))
    back = {point_key(r.params, ["train.seed"]): r for r in from_table(table)}
    for r in recorded:
        again = back[point_key(r.params, ["train.seed"])]
        assert [v["val_loss"] for v in again.validations] == \
            [v["val_loss"] for v in r.validations]
        assert again.result["final"]["val_loss"] == r.result["final"]["val_loss"]
    spec = write_spec(tmp_path / "re.yaml", name="re", parameters=SEEDS,
                      launcher={"type": "replay", "from": "t.json"})
    proc = run_orch(["sweep", str(spec)], orch_env(orch_home, SCRIPT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _curves(orch_home, "re") == _curves(orch_home, "rec")
