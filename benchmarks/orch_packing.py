"""Packing: 8 tiny real trials on 2 slots vs 1 slot (a 2-core CPU); goal >= 1.6x trials/hour.

    python benchmarks/orch_packing.py [--data ../shared/data/hacker_news.csv] [--trials 8]

Both runs share one pre-built data cache, so neither pays for tokenisation; base_tiny pins one
torch thread per trial, so one slot leaves a core idle and two slots fill both.
"""

from __future__ import annotations

import argparse
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


def run(tmp: Path, slots: int, trials: int, data: Path, cache: Path) -> tuple[float, float]:
    """(wall of `orch sweep`, first trial start to last trial end) for one slot count."""
    home = tmp / f"home{slots}"
    spec = tmp / f"pack{slots}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": f"pack{slots}", "base": str(REPO / "sweeps" / "base_tiny.yaml"),
        "method": "grid", "parameters": {"train.seed": {"values": list(range(1, trials + 1))}},
        "resources": {"gpus": None, "cpu_slots": slots}}))
    env = {**os.environ, "ORCH_HOME": str(home), "ORCH_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(spec),
                           "--data", str(data)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stdout + proc.stderr)
    rows = Ledger(home).trials(f"pack{slots}")
    assert all(t.state == "finished" for t in rows), [t.state for t in rows]
    return wall, max(t.ended_at for t in rows) - min(t.started_at for t in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path,
                   default=REPO.parent / "shared" / "data" / "hacker_news.csv")
    p.add_argument("--trials", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cache = tmp / "cache"
        # Build the data cache once, outside both measurements.
        subprocess.run([sys.executable, "-m", "trainer", "--config",
                        str(REPO / "sweeps" / "base_tiny.yaml"), "--out", str(tmp / "warm"),
                        "--quiet", f"data.path={args.data.resolve()}", "train.max_steps=1"],
                       env={**os.environ, "ORCH_CACHE_DIR": str(cache)}, check=True)
        one_wall, one_span = run(tmp, 1, args.trials, args.data.resolve(), cache)
        two_wall, two_span = run(tmp, 2, args.trials, args.data.resolve(), cache)
    n = args.trials
    print(f"cores {os.cpu_count()}, {n} trials of base_tiny")
    for label, wall, span in (("1 slot ", one_wall, one_span), ("2 slots", two_wall, two_span)):
        print(f"{label}: {wall:6.1f} s wall ({n / wall * 3600:6.0f} trials/h), "
              f"{span:6.1f} s trial span ({n / span * 3600:6.0f} trials/h)")
    print(f"speed-up, wall: {one_wall / two_wall:.2f}x   trial span: {one_span / two_span:.2f}x"
          f"   (goal >= 1.6x)")


if __name__ == "__main__":
    main()
