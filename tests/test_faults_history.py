"""Fault injection: a trial cut short by kill -9 or Ctrl-C of orch, then resumed, ends with the
metric history of a clean run, point for point (no rows of the interrupted launch)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
from orch_helpers import orch_env, pid_alive, run_orch, start_orch, wait_for, write_spec

from orchestrator.ledger import Ledger
from trainer.events import read_events

CURVE = [3.0, 2.5, 2.0, 1.5]


def _script(gate: Path) -> dict[str, Any]:
    """Every trial pauses after two validations until `gate` exists: the moment of the fault."""
    return {"default": {"curve": CURVE, "pause_after": 2, "pause_until": str(gate)}}


def _points(home: Path) -> dict[int, list[tuple[int | None, dict[str, Any]]]]:
    """Each trial's validation points (step, metrics) as every reader sees them."""
    ledger = Ledger(home)
    return {t.number: [(p.step, p.metrics) for p in ledger.history(t)]
            for t in ledger.trials("t")}


def _rows(home: Path) -> dict[int, int]:
    """Metric rows in the ledger per trial, whatever their attempt."""
    ledger = Ledger(home)
    return {t.number: ledger.db.execute("SELECT COUNT(*) FROM metrics WHERE trial_id=?",
                                        (t.id,)).fetchone()[0] for t in ledger.trials("t")}


def _paused(home: Path) -> bool:
    """Trial 1 runs and the ledger holds its first two validations (the fake now waits)."""
    ledger = Ledger(home)
    trials = ledger.trials("t") if ledger.sweep("t") else []
    return bool(trials) and trials[0].state == "running" and len(ledger.history(trials[0])) == 2


def validations(path: Path) -> list[dict[str, Any]]:
    """The validation_step events of one events.jsonl."""
    return [e for e in read_events(path) if e.get("event") == "validation_step"]


def _kill_9(proc: Any) -> int:
    os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=30)


def _ctrl_c(proc: Any) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=30)


@pytest.fixture(scope="module")
def clean_points(tmp_path_factory: pytest.TempPathFactory, fake_schema_file: Path
                 ) -> tuple[dict[int, Any], dict[int, float | None]]:
    """The validation points and best metric of each trial of the sweep run without a fault."""
    tmp = tmp_path_factory.mktemp("clean")
    spec = write_spec(tmp / "s.yaml", parameters={"train.seed": {"values": [1, 2]}})
    (tmp / "open").touch()
    home = tmp / "home"
    env = orch_env(home, _script(tmp / "open"), FAKE_SCHEMA_FILE=str(fake_schema_file))
    clean = run_orch(["sweep", str(spec)], env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    return _points(home), {t.number: t.best_metric for t in Ledger(home).trials("t")}


@pytest.mark.parametrize("fault, code", [(_kill_9, -signal.SIGKILL), (_ctrl_c, 130)],
                         ids=["kill-9", "ctrl-c"])
def test_a_resumed_trial_keeps_only_the_history_of_its_rerun(
        fault: Callable[[Any], int], code: int, orch_home: Path, tmp_path: Path,
        clean_points: tuple[dict[int, Any], dict[int, float | None]]) -> None:
    expected, clean_best = clean_points
    assert [len(p) for p in expected.values()] == [len(CURVE)] * 2
    spec = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": [1, 2]}})
    gate = tmp_path / "gate"

    proc = start_orch(["sweep", str(spec)], orch_env(orch_home, _script(gate)))
    try:
        wait_for(lambda: _paused(orch_home), what="trial 1 paused after two validations")
        pid = Ledger(orch_home).trials("t")[0].pid
        assert fault(proc) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the interrupted trial to end")
    gate.touch()
    again = run_orch(["sweep", str(spec)], orch_env(orch_home, _script(gate)))
    assert again.returncode == 0, again.stdout + again.stderr

    ledger = Ledger(orch_home)
    trials = ledger.trials("t")
    assert [(t.state, t.attempts) for t in trials] == [("finished", 1), ("finished", 1)]
    assert _points(orch_home) == expected  # point for point, steps and values
    assert _rows(orch_home) == {1: len(CURVE), 2: len(CURVE)}  # no stale rows kept aside
    assert {t.number: t.best_metric for t in trials} == clean_best
    # The re-run wrote a fresh events file; the cut-short launch's is kept apart.
    run_dir = Path(trials[0].run_dir or "")
    assert len(validations(run_dir / "events.jsonl")) == len(CURVE)
    aside = run_dir.parent / "interrupted" / f"{run_dir.name}.1"
    assert len(validations(aside / "events.jsonl")) == 2
    assert f"moved to {aside}" in again.stdout
    status = run_orch(["status", "t", "--format", "json"], orch_env(orch_home))
    assert status.returncode == 0, status.stderr
    shown = {t["number"]: [(p["step"], p["metrics"]) for p in t["history"]]
             for t in json.loads(status.stdout)["trials"]}
    assert shown == {n: [(s, m) for s, m in pts] for n, pts in expected.items()}
