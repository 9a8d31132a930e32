"""What a Slurm job costs per trial against a local process: start latency and per-trial cycle.

    .venv/bin/python benchmarks/slurm_overhead.py [--trials 6] [--polls 0.5 5]

Needs a Slurm controller (bash ../shared/slurm/start-slurm.sh). The same trivial contract
program (it notes its own start time, writes one validation event and result.json, and exits)
runs as a one-slot sweep of N trials under `launcher: local` and `launcher: slurm`
(max_concurrent 1, so nothing queues behind a busy CPU).

- Submission-to-start latency: from the moment the run loop hands the trial to the launcher
  (the mtime of RUN_DIR/trial.json, written just before) to the program's first line: fork/exec
  for local; sbatch, slurmctld's scheduling, slurmd's launch and the batch shell for Slurm.
- Per-trial cycle: from one trial's start to the next's in the ledger: start, run, notice the
  end, judge, record, start the next. For Slurm the end is noticed by the squeue poll
  (`launcher.poll` seconds apart) plus the sacct/scontrol lookup, so it is shown per poll.
Medians over the trials after the first; ratios are Slurm / local.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from trivial_sweep import trivial_spec  # benchmarks/ is on sys.path when run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROGRAM = '''\
"""A trivial contract program: schema/validate from the real trainer, a run in milliseconds."""
import json, sys, time
began = time.time()
from pathlib import Path
argv = sys.argv[1:]
if argv[:1] in (["schema"], ["validate"]):
    sys.path.insert(0, REPO)
    from trainer.__main__ import main
    sys.exit(main(argv))
out = Path(argv[argv.index("--out") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "began").write_text(repr(began))
m = {"val_loss": 1.0, "val_loss_tok": 4.0, "val_bpb": 1.4, "val_coverage": 0.9}
with open(out / "events.jsonl", "a") as f:
    f.write(json.dumps({"event": "validation_step", "step": 1, "max_steps": 1, **m}) + "\\n")
(out / "result.json").write_text(json.dumps({"status": "finished", "final": m, "best": m}))
'''


def measure(workdir: Path, launcher: dict, trials: int) -> dict[str, float]:
    """Median start latency and per-trial cycle (seconds) of a one-slot sweep of trivial trials."""
    from orchestrator.ledger import Ledger

    home = Path(tempfile.mkdtemp(prefix="orch-bench-home-", dir=workdir))
    prog = workdir / "trial.py"
    spec = trivial_spec(prog, trials, launcher)
    path = home / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "ORCH_HOME": str(home), "COLUMNS": "160"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(path)], env=env,
                          capture_output=True, text=True, cwd=workdir)
    done = Ledger(home).trials("bench")
    if proc.returncode != 0 or any(t.state != "finished" for t in done):
        raise SystemExit(f"sweep failed ({launcher}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    latency = []
    for t in done[1:]:
        run_dir = Path(t.run_dir or "")
        latency.append(float((run_dir / "began").read_text())
                       - (run_dir / "trial.json").stat().st_mtime)
    starts = sorted(t.started_at or 0.0 for t in done)
    cycles = [b - a for a, b in zip(starts[1:], starts[2:])]
    return {"latency": statistics.median(latency), "cycle": statistics.median(cycles)}


def main() -> None:
    from orchestrator.launch.slurm import commands as slurm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--polls", type=float, nargs="+", default=[0.5, 5.0],
                        help="launcher.poll values to measure (seconds between squeue calls)")
    args = parser.parse_args()
    why = slurm.unavailable()
    if why:
        raise SystemExit(f"{why}; start one with bash ../shared/slurm/start-slurm.sh")
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "trial.py").write_text(PROGRAM.replace("REPO", repr(str(REPO))))
        rows = {"local": measure(workdir, {"type": "local"}, args.trials)}
        for poll in args.polls:
            rows[f"slurm poll={poll:g}s"] = measure(
                workdir, {"type": "slurm", "max_concurrent": 1, "poll": poll}, args.trials)
    local = rows["local"]
    print(f"{args.trials} trivial trials per launcher, one at a time; medians after the first")
    print(f"{'launcher':<18} {'start latency':>14} {'ratio':>8} {'cycle/trial':>12} {'ratio':>8}")
    for name, row in rows.items():
        print(f"{name:<18} {row['latency'] * 1000:>11.0f} ms "
              f"{row['latency'] / local['latency']:>7.1f}x {row['cycle']:>10.2f} s "
              f"{row['cycle'] / local['cycle']:>7.1f}x")
    print(json.dumps({k: {m: round(v, 4) for m, v in r.items()} for k, r in rows.items()}))


if __name__ == "__main__":
    main()
