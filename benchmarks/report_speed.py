"""`orch report` on a ledger of 500 trials, side by side with `orch results` on the same ledger.

    python benchmarks/report_speed.py [--trials 500] [--repeat 3] [--points 12]

Builds a synthetic sweep through the ledger's own API (upsert_sweep, add_trial, mark_running,
record_progress, finish: the calls a real sweep makes), 500 trials over a learning rate, a
depth, a width and two seeds, each with --points validation points, about 1 in 20 failed or
diverged. Then times, as whole commands (Python start-up and imports included), best and median
of --repeat runs:
  results   orch results SWEEP --format markdown
  report    orch report SWEEP --out report.html
and prints their ratio and the report's size. Goals: report under 5 s, file under 10 MB.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from validate_speed import cpu_features

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.ledger import Ledger  # noqa: E402
from orchestrator.states import TrialState  # noqa: E402

VARIED = ["optim.lr", "model.n_layer", "model.d_model", "train.seed"]


def build_ledger(home: Path, trials: int, points: int, seed: int = 0) -> str:
    """A finished synthetic sweep of `trials` trials in ORCH_HOME `home`; its name."""
    rng = random.Random(seed)
    ledger = Ledger(home)
    name = "bench"
    spec = {"name": name, "base": "base_tiny.yaml", "method": "random",
            "program": "python -m trainer", "metric": {"name": "val_loss", "goal": "minimize"}}
    ledger.upsert_sweep(name, "bench.yaml", spec, VARIED, "val_loss", "minimize")
    for i in range(trials):
        params = {"optim.lr": 10 ** rng.uniform(-4, -1.5), "model.n_layer": rng.choice([1, 2, 4]),
                  "model.d_model": rng.choice([64, 128]), "train.seed": 1 + i % 2}
        t = ledger.add_trial(name, f"{i:016x}", params)
        start = 1_700_000_000.0 + 60 * i
        ledger.mark_running(t.id, pid=None, pgid=None, run_dir=str(home / "runs" / f"{i:04d}"),
                            slot=0, started_at=start)
        lr_cost = (params["optim.lr"] ** 0.5 - 0.03) ** 2 * 40
        target = 1.3 + lr_cost + 0.2 / params["model.n_layer"] + rng.gauss(0, 0.02)
        curve = [{"event": "validation_step", "step": 10 * (k + 1), "time": start + 2.0 * (k + 1),
                  "val_loss": target + 2.0 / (k + 1), "val_coverage": 0.9}
                 for k in range(points)]
        ledger.record_progress(t.id, 1, 10 * points, 10 * points, curve, "val_loss", "minimize")
        fate = rng.random()
        state = TrialState.FINISHED if fate > 0.05 else \
            TrialState.DIVERGED if fate > 0.025 else TrialState.FAILED
        last = curve[-1]["val_loss"]
        final = {"val_loss": last, "val_coverage": 0.9, "val_bpb": last * 1.44,
                 "val_loss_tok": last * 4} if state == TrialState.FINISHED else {}
        ledger.finish(t.id, state=state, reason=None if final else "synthetic failure",
                      exit_code=0 if final else 1, ended_at=start + 2.0 * points + 1,
                      final=final, best={"step": 10 * points, **final} if final else {},
                      program_wall=2.0 * points + 1,
                      result={"wall_time_s": 2.0 * points, "tokens_per_s": 20_000.0,
                              "parameters": 137_000} if final else None)
    ledger.release(name, "finished")
    ledger.close()
    return name


def time_command(args: list[str], env: dict[str, str], repeat: int) -> list[float]:
    """Wall seconds of `orch ARGS`, `repeat` times after one untimed warm-up."""
    runs = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=REPO,
                       check=True, capture_output=True)
        if i:
            runs.append(time.perf_counter() - start)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--points", type=int, default=12, help="validation points per trial")
    args = p.parse_args()
    print(f"cpu: {cpu_features()}")
    print(f"python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        started = time.perf_counter()
        name = build_ledger(home, args.trials, args.points)
        print(f"ledger: {args.trials} trials x {args.points} validation points, built in "
              f"{time.perf_counter() - started:.1f} s")
        env = {**os.environ, "ORCH_HOME": str(home), "PYTHONPATH": str(REPO)}
        page = Path(tmp) / "report.html"
        results = time_command(["results", name, "--format", "markdown"], env, args.repeat)
        report = time_command(["report", name, "--out", str(page)], env, args.repeat)
        size = page.stat().st_size
    for label, runs in (("results", results), ("report", report)):
        print(f"  {label:8s} best {min(runs):6.2f} s  median {statistics.median(runs):6.2f} s")
    ratio = statistics.median(report) / statistics.median(results)
    print(f"  report / results: {ratio:.1f}x; report file {size / 1e6:.2f} MB")
    print(f"  goals: report under 5 s ({'met' if statistics.median(report) < 5 else 'MISSED'}), "
          f"file under 10 MB ({'met' if size < 10e6 else 'MISSED'})")


if __name__ == "__main__":
    main()
