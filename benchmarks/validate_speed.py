"""The inner loop's speed: `orch validate` and `orch sweep --dry-run` against `orch --help`.

    python benchmarks/validate_speed.py [--repeat 5] [--baseline OTHER_CHECKOUT]

Times, warm (each command runs once untimed first, so the schema cache is filled), the wall
time of
  help      orch --help                                   (Python start-up and orch's imports)
  validate  orch validate sweeps/smoke.yaml
  dry-run   orch sweep sweeps/sparse_grid.yaml --dry-run --no-probe  (64 grid points checked)
as best and median of --repeat runs, and their ratios to `--help` (goals: validate <= 2x,
dry-run <= 3x). With --baseline, the same commands run from that checkout (an older
version of this repository) too, in the same run, each with its own fresh ORCH_HOME.

The dry run is timed with --no-probe (where the checkout has it): a warm dry run answers its
estimate from the probe cache, and --no-probe does exactly that work (the points' validation,
the ledger's history, the cache read) without the one probe a fresh ORCH_HOME would pay (up to
its time budget) or, where the spec's data cannot be read (the Hugging Face hub offline), a
failing probe on every run, which is not cached.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"help": ["--help"], "validate": ["validate", "sweeps/smoke.yaml"],
            "dry-run": ["sweep", "sweeps/sparse_grid.yaml", "--dry-run"]}


def cpu_features() -> str:
    """The CPU model and its vector/matrix extensions, from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = set(fields.get("flags\t\t", fields.get("flags", "")).split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    found = [f for f in wanted if f in flags] or ["none of avx2/avx512/amx"]
    model = fields.get("model name\t", fields.get("model name", "?")).strip()
    return f"{model}; {os.cpu_count()} CPUs; {' '.join(found)}"


def time_commands(code: Path, repeat: int) -> dict[str, list[float]]:
    """Wall seconds of each command, `repeat` times after one untimed warm-up, from `code`."""
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "ORCH_HOME": home, "PYTHONPATH": str(code)}
        env.pop("ORCH_CACHE_DIR", None)
        for name, args in COMMANDS.items():
            argv = [sys.executable, "-m", "orchestrator", *args]
            if name == "dry-run" and any("--no-probe" in f.read_text()
                                         for f in (code / "orchestrator/cli").glob("*.py")):
                argv.append("--no-probe")
            times[name] = []
            for i in range(repeat + 1):
                start = time.perf_counter()
                subprocess.run(argv, cwd=code, env=env, check=True, capture_output=True)
                if i:
                    times[name].append(time.perf_counter() - start)
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    """One line per command: best, median, and the ratio of the medians to `--help`'s."""
    help_median = statistics.median(times["help"])
    print(f"{label}:")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"  {name:9s} best {min(runs):6.2f} s  median {median:6.2f} s  "
              f"{median / help_median:5.1f}x --help")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout of this repository to time side by side")
    args = p.parse_args()
    print(f"cpu: {cpu_features()}")
    print(f"python {platform.python_version()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ours = time_commands(REPO, args.repeat)
    report(f"this checkout ({REPO.name})", ours)
    if args.baseline is not None:
        base = time_commands(args.baseline.resolve(), args.repeat)
        report(f"baseline ({args.baseline})", base)
        for name in COMMANDS:
            print(f"  {name:9s} baseline / this: "
                  f"{statistics.median(base[name]) / statistics.median(ours[name]):5.1f}x")


if __name__ == "__main__":
    main()
