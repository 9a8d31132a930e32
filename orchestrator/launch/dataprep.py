"""The data the trials read, prepared once before the first launch.

Each distinct data setting of the sweep's trials (the keys the program's `describe` names as
`data_keys`) runs the contract's `PROGRAM prepare` once, before anything launches:
the cache is warm when the trials start, and a titles file the program cannot use (no `title`
column, not UTF-8, too few titles for one batch) stops the sweep in seconds with the program's
own message, exit 2, nothing launched, instead of failing every trial. A program that declares
no `prepare` prepares nothing here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from orchestrator.contract import EXIT_BAD_INPUT
from orchestrator.launch.command import assignments, prepare_command
from orchestrator.launch.protocol import LauncherError
from orchestrator.spec.plan import Plan
from orchestrator.search import param_names
from orchestrator.spec.document import SpecError


def data_settings(plan: Plan) -> list[dict[str, Any]]:
    """The distinct data settings of the trials known before the first launch: those of every
    grid point, or the fixed ones of a random or bayes search whose parameters leave the data
    alone (one that searches over the data prepares each draw as it launches)."""
    described = plan.described
    if not described.prepare:
        return []
    if plan.grid is not None:
        points = [plan.resolved(point) for point, _ in plan.grid]
    elif any(described.is_data_key(name) for name, _, _ in param_names(plan.spec.parameters)):
        return []
    else:
        points = [plan.fixed]
    distinct: dict[str, dict[str, Any]] = {}
    for point in points:
        sets = {k: v for k, v in point.items() if described.is_data_key(k)}
        distinct.setdefault(json.dumps(sets, sort_keys=True, default=str), sets)
    return list(distinct.values())


def refusal(spec_path: Path, sets: dict[str, Any], code: int, output: str) -> Exception:
    """The error for a failed `prepare`: the program's own message when it refused the data
    (exit 2, a SpecError: bad input), else a LauncherError with the tail of its output."""
    said = [line.removeprefix("error: ") for line in output.splitlines()
            if line.startswith("error: ")]
    shown = " ".join(assignments(sets))
    at = f" (with {shown})" if shown else ""
    if code == EXIT_BAD_INPUT and said:
        return SpecError([f"{spec_path}: the data check before the first trial failed{at}, so "
                          f"nothing was launched: {said[-1]}"])
    return LauncherError(f"preparing the data cache{at} exited {code}: "
                         f"{output.strip()[-800:] or 'no output'}")


def prepare_on_host(spec_path: Path, program: list[str], base: Path,
                    settings: list[dict[str, Any]], cache_dir: Path) -> None:
    """Run `PROGRAM prepare --config BASE k=v ...` here for each setting, into `cache_dir` (the
    trials' ORCH_CACHE_DIR); raise `refusal` at the first that fails."""
    env = {**os.environ, "ORCH_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    for sets in settings:
        argv = prepare_command(program, str(base), sets)
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as err:
            raise LauncherError(f"`{shlex.join(argv)}` could not run: {err}") from None
        if proc.returncode != 0:
            raise refusal(spec_path, sets, proc.returncode, proc.stdout)
