"""Orchestration overhead per trial, with a trivial program that honours the trainer contract.

    python benchmarks/orch_overhead.py [--trials 30]

Runs `orch sweep` on a grid of N trials of tests/fake_trainer.py (one validation, no sleep) on
one slot, then reports:
  total    wall time of the whole `orch sweep` command (spec checks included)
  program  sum of the trial processes' lifetimes (spawn to exit, from the ledger)
  overhead (total - program) / N, the goal is <= 0.3 s per trial
and the same with the fixed start-up (spec checks: the schema and validate calls) left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.ledger import Ledger  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        schema = Path(tmp) / "schema.json"
        schema.write_text(subprocess.run([sys.executable, "-m", "trainer", "schema"],
                                         capture_output=True, text=True, check=True).stdout)
        spec = Path(tmp) / "overhead.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "overhead", "base": str(REPO / "sweeps" / "base_tiny.yaml"),
            "program": f"{sys.executable} {REPO / 'tests' / 'fake_trainer.py'}",
            "method": "grid", "parameters": {"train.seed": {"values": list(range(args.trials))}},
            "resources": {"gpus": None, "cpu_slots": 1}}))
        env = {**os.environ, "ORCH_HOME": str(home), "FAKE_SCHEMA_FILE": str(schema),
               "FAKE_SCRIPT": json.dumps({"default": {"curve": [1.0]}})}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(spec)],
                              env=env, capture_output=True, text=True)
        total = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(proc.stdout + proc.stderr)
        trials = Ledger(home).trials("overhead")
        program = sum(t.program_wall or 0 for t in trials)
        span = max(t.ended_at for t in trials) - min(t.started_at for t in trials)
    n = len(trials)
    print(f"trials                      {n}")
    print(f"total wall (orch sweep)     {total:.2f} s")
    print(f"program time (sum)          {program:.2f} s  ({program / n * 1000:.0f} ms/trial)")
    print(f"fixed start-up and table    {total - span:.2f} s")
    print(f"overhead per trial, all-in  {(total - program) / n:.3f} s  (goal <= 0.3 s)")
    print(f"overhead per trial, loop    {(span - program) / n:.3f} s  (start-up left out)")


if __name__ == "__main__":
    main()
