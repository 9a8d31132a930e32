"""End to end with the real trainer on tiny configs and the real Hacker News titles."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from orch_helpers import BASE_TINY, REPO, orch_env, run_orch

from orchestrator.ledger import Ledger


def test_smoke_spec_runs_with_local_data(orch_home: Path, tiny_titles: Path) -> None:
    env = orch_env(orch_home)
    proc = run_orch(["sweep", str(REPO / "sweeps" / "smoke.yaml"), "--data", str(tiny_titles)],
                    env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = Ledger(orch_home).trials("smoke")
    assert len(trials) == 6 and all(t.state == "finished" for t in trials)
    assert all(t.final.get("val_loss") and 0 < t.final["val_coverage"] <= 1 for t in trials)
    assert all(t.step == t.max_steps for t in trials)  # progress tailed from events.jsonl
    assert any((orch_home / "cache").iterdir())  # one data cache, shared by the trials
    assert "coverage" in proc.stdout and "val_bpb" in proc.stdout
    losses = [t.final["val_loss"] for t in trials]
    table_order = [line.split("│")[1].strip() for line in proc.stdout.splitlines()
                   if line.startswith("│")]
    best = min(trials, key=lambda t: t.final["val_loss"])
    assert table_order[0] == str(best.number) and len(set(losses)) > 1


def test_real_divergence_is_honest_and_the_sweep_continues(orch_home: Path, tmp_path: Path,
                                                          tiny_titles: Path) -> None:
    spec = tmp_path / "div.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "div", "base": str(BASE_TINY), "program": f"{sys.executable} -m trainer",
        "method": "grid", "parameters": {"optim.lr": {"values": [1.0e4, 3.0e-3]}},
        "overrides": {"data.num_titles": 500}, "resources": {"gpus": None, "cpu_slots": 1}}))
    proc = run_orch(["sweep", str(spec), "--data", str(tiny_titles)], orch_env(orch_home),
                    timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.params["optim.lr"]: t for t in Ledger(orch_home).trials("div")}
    assert trials[1.0e4].state == "diverged" and trials[1.0e4].exit_code == 3
    assert trials[3.0e-3].state == "finished" and trials[3.0e-3].exit_code == 0
    log = (Path(trials[3.0e-3].run_dir) / "trial.log").read_text()
    assert "validation_step" in log  # the trainer's console output went to the trial log
