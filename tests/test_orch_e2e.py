"""End to end with the real trainer on tiny configs and the real Hacker News titles."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from orch_helpers import BASE_TINY, orch_env, run_orch

from orchestrator.ledger import Ledger


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
