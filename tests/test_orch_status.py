"""`orch status`: JSON for scripts, the latest sweep without a name, the device a trial reports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from orch_helpers import orch_env, run_orch, write_spec
from rich.console import Console

from orchestrator.ledger import Ledger
from orchestrator.spec.plan import build_plan
from orchestrator.run.progress import Progress
from orchestrator.run.loop import RunLoop
from orchestrator.run.slots import Slot, ran_on


def _sweep(ledger: Ledger, name: str) -> None:
    ledger.upsert_sweep(name, f"{name}.yaml", {}, ["train.seed"], "val_loss", "minimize")


def _validation(step: int, loss: float) -> dict:
    # max_steps is progress, as in the trainer's own validation_step events: not a metric.
    return {"event": "validation_step", "step": step, "max_steps": 30, "time": 1000.0 + step,
            "val_loss": loss}


def test_status_json_lists_the_history_of_the_attempt_that_counts(orch_home: Path) -> None:
    ledger = Ledger(orch_home)
    _sweep(ledger, "s")
    retried = ledger.add_trial("s", "h1", {"train.seed": 1})
    ledger.add_trial("s", "h2", {"train.seed": 2})  # never started: no history
    for attempt, curve in ((1, [4.0, 3.5]), (2, [3.0, 2.0, 1.0])):
        ledger.mark_running(retried.id, pid=1, pgid=1, run_dir=f"r{attempt}", slot=0,
                            started_at=0.0)
        ledger.record_progress(retried.id, attempt, 10 * len(curve), 30,
                               [_validation(10 * (i + 1), v) for i, v in enumerate(curve)],
                               "val_loss", "minimize")
        ledger.set_device(retried.id, "cpu")
        ledger.finish(retried.id, state="failed" if attempt == 1 else "finished", reason=None,
                      exit_code=0, ended_at=1.0, final=None, best=None, program_wall=1.0)

    proc = run_orch(["status", "s", "--format", "json"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert (shown["sweep"], shown["metric"], shown["goal"]) == ("s", "val_loss", "minimize")
    for row, t in zip(shown["trials"], ledger.trials("s"), strict=True):
        assert (row["number"], row["state"], row["attempts"], row["device"], row["params"]) == (
            t.number, t.state, t.attempts, t.device, t.params)
        assert row["history"] == [{"step": p.step, "time": p.time, "metrics": p.metrics}
                                  for p in ledger.history(t)]
    first, never = shown["trials"]
    assert [h["metrics"] for h in first["history"]] == [{"val_loss": v} for v in (3.0, 2.0, 1.0)]
    assert [h["step"] for h in first["history"]] == [10, 20, 30]
    assert (first["attempts"], first["device"], first["best_metric"]) == (2, "cpu", 1.0)
    assert never["history"] == [] and never["device"] is None

    bad = run_orch(["status", "s", "--format", "yaml"], orch_env(orch_home))
    assert bad.returncode == 2 and "--format yaml: choose one of table, json" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_status_without_a_name_shows_the_latest_sweep(orch_home: Path) -> None:
    empty = run_orch(["status"], orch_env(orch_home))
    assert empty.returncode == 0 and "no sweeps in" in empty.stderr
    ledger = Ledger(orch_home)
    _sweep(ledger, "older")
    _sweep(ledger, "newer")
    ledger.add_trial("newer", "h1", {"train.seed": 7})
    proc = run_orch(["status"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stderr
    assert "sweep newer" in proc.stdout and "pending" in proc.stdout
    assert "also: older" in proc.stderr
    as_json = run_orch(["status", "--format", "json"], orch_env(orch_home))
    assert json.loads(as_json.stdout)["sweep"] == "newer"
    _sweep(ledger, "older")  # run again: now the latest
    assert "sweep older" in run_orch(["status"], orch_env(orch_home)).stdout


def test_ran_on_names_a_cuda_device_by_its_slot_and_keeps_what_else_the_program_says() -> None:
    assert ran_on("cuda", Slot(0, "cuda:3", {})) == "cuda:3"
    assert ran_on("cuda:0", Slot(0, "cuda:3", {})) == "cuda:3"
    assert ran_on("cpu", Slot(0, "cuda:0", {})) == "cpu"
    assert ran_on("cuda", Slot(0, "slurm", {})) == "cuda"


def test_the_device_shown_is_the_one_the_trial_reports(orch_home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # Trial 1 lands in a GPU slot but its program runs on the CPU (no GPU visible to it);
    # trial 2 reports CUDA from the GPU its slot gave it.
    monkeypatch.setenv("FAKE_SCRIPT", json.dumps({"key": "train.seed", "cases": {
        "1": {"device": "cpu"}, "2": {"device": "cuda"}}}))
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2]}})
    plan = build_plan(spec)
    slots = [Slot(0, "cuda:0", {"CUDA_VISIBLE_DEVICES": ""}),
             Slot(1, "cuda:3", {"CUDA_VISIBLE_DEVICES": ""})]
    try:
        ledger = Ledger(orch_home)
        code = RunLoop(plan, ledger, Progress("t", plan.varied, "val_loss", live=False),
                         orch_home, slots=slots).run()
    finally:
        plan.close()
    assert code == 0
    assert [(t.state, t.device) for t in ledger.trials("t")] == [("finished", "cpu"),
                                                                 ("finished", "cuda:3")]
    notes = capsys.readouterr().out
    assert "trial 1 runs on cpu, not on its slot's cuda:0" in notes
    assert "trial 2 runs on" not in notes
    status = run_orch(["status", "t"], orch_env(orch_home))
    assert "device" in status.stdout and "cpu" in status.stdout and "cuda:3" in status.stdout
    assert "cuda:0" not in status.stdout
    live = Console(width=200, record=True, file=io.StringIO())
    live.print(Progress("t", plan.varied, "val_loss").table(ledger.trials("t"), 0.0))
    drawn = live.export_text()
    assert "cpu" in drawn and "cuda:3" in drawn and "cuda:0" not in drawn


@pytest.mark.parametrize("goal, best", [("minimize", 0.5), ("maximize", 0.9)])
def test_best_metric_counts_every_validation_of_a_poll(orch_home: Path, goal: str,
                                                       best: float) -> None:
    """One poll can bring several validations: the best is over all of them, not over the
    last of each poll (status showed, and the search engines read, a worse 'best')."""
    ledger = Ledger(orch_home)
    _sweep(ledger, "s")
    t = ledger.add_trial("s", "h1", {"train.seed": 1})
    ledger.mark_running(t.id, pid=1, pgid=1, run_dir="r", slot=0, started_at=0.0)
    ledger.record_progress(t.id, 1, 30, 40, [_validation(10, 0.9), _validation(20, 0.5),
                                             _validation(30, 0.8)], "val_loss", goal)
    ledger.record_progress(t.id, 1, 40, 40, [_validation(40, 0.7)], "val_loss", goal)
    row = ledger.trial(t.id)
    assert (row.best_metric, row.last_metric) == (best, 0.7)
