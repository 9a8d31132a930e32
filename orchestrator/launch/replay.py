"""The replay launcher: answers each trial with the recorded learning curve of the same point of
a finished sweep (a tabular benchmark, as LCBench and NAS-Bench are used), without running any
program, so search methods can be compared over many repetitions in seconds.

The recording is a sweep in this ledger, or a table file (JSON, `benchmarks/tables/`). A replayed
attempt writes one recorded validation to its events.jsonl each time the run loop looks, so
early termination sees the curve arrive as it would from a trainer and can stop it mid-way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from signal import Signals
from typing import Any

from orchestrator.contract import EXIT_CRASHED, EXIT_DIVERGED, EXIT_FINISHED, EXIT_SIGTERM
from orchestrator.launch.protocol import Launch, LauncherError, Run
from orchestrator.ledger import Ledger
from orchestrator.states import TrialState

EXIT_OF = {TrialState.FINISHED: EXIT_FINISHED, TrialState.DIVERGED: EXIT_DIVERGED}


@dataclass
class Recorded:
    """One recorded trial: its point, validations (event dicts), state and result.json."""

    params: dict[str, Any]
    validations: list[dict[str, Any]]
    state: str
    result: dict[str, Any]


def _norm(value: Any) -> Any:
    # 1e-3 and 0.001, 3 and 3.0 are one value, as in a grid's identity of a point.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def point_key(params: dict[str, Any], names: list[str]) -> str:
    """The identity of a point over the recording's parameter names."""
    return json.dumps({n: _norm(params.get(n)) for n in names}, sort_keys=True, default=str)


def from_ledger(ledger: Ledger, sweep: str) -> list[Recorded]:
    """The trials of a sweep in the ledger, with the validation history that counts."""
    out = []
    for t in ledger.trials(sweep):
        if t.state == TrialState.INVALID:
            continue
        events = [{"event": "validation_step", "step": v.step, **v.metrics}
                  for v in ledger.history(t)]
        result = dict(t.result or {})
        for key, value in (("status", t.state.value), ("final", t.final), ("best", t.best)):
            result.setdefault(key, value)
        out.append(Recorded(dict(t.params), events, t.state.value, result))
    return out


def from_table(path: Path) -> list[Recorded]:
    """The trials of a table file (benchmarks/tables/*.json, written by `to_table`)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    metrics = data["metrics"]
    out = []
    for row in data["trials"]:
        events = [{"event": "validation_step", "step": s, "max_steps": row["max_steps"],
                   **dict(zip(metrics, values))} for s, values in row["curve"]]
        result = {"status": row["state"], "final": row["final"], "best": row["best"]}
        out.append(Recorded(row["params"], events, row["state"], result))
    return out


def to_table(recorded: list[Recorded], metrics: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """A compact table: each trial's point, state, final/best metrics and curve (step, values)."""
    trials = []
    for r in recorded:
        trials.append({
            "params": r.params, "state": r.state,
            "max_steps": next((v.get("max_steps") for v in r.validations), None),
            "final": {k: (r.result.get("final") or {}).get(k) for k in metrics},
            "best": {k: (r.result.get("best") or {}).get(k) for k in metrics},
            "curve": [[v.get("step"), [v.get(k) for k in metrics]] for v in r.validations]})
    return {**meta, "metrics": metrics, "trials": trials}


@dataclass(kw_only=True)
class ReplayRun(Run):
    """A replayed attempt: the recorded trial and how many validations it has written."""

    recorded: Recorded
    shown: int = 0
    code: int | None = None
    stopped: bool = False


class ReplayLauncher:
    """Serves trials from a recording instead of running a program."""

    def __init__(self, source: str, spec_dir: Path, home: Path) -> None:
        self.source = source
        self.spec_dir = spec_dir
        self.home = home
        self.table: dict[str, Recorded] = {}
        self.names: list[str] = []

    def prepare(self, devices: list[str]) -> None:
        """Load the recording (a table file or a sweep of this ledger)."""
        path = (self.spec_dir / self.source)
        if self.source.endswith(".json") and path.is_file():
            recorded = from_table(path)
        else:
            ledger = Ledger(self.home)
            try:
                if ledger.sweep(self.source) is None:
                    raise LauncherError(
                        f"launcher.from: {self.source!r} is neither a sweep in this ledger nor a "
                        f"table file (.json, relative to the spec); record it first with `orch "
                        f"sweep`, or give the table's path")
                recorded = from_ledger(ledger, self.source)
            finally:
                ledger.close()
        self.names = sorted({n for r in recorded for n in r.params})
        self.table = {point_key(r.params, self.names): r for r in recorded}

    def reap_orphans(self, marker: str) -> int:
        """Nothing outlives a replay."""
        return 0

    def start(self, launch: Launch) -> Run:
        """Find the recorded trial of this point; a point the recording lacks is an error."""
        overrides = launch.command.overrides
        recorded = self.table.get(point_key(overrides, self.names))
        if recorded is None:
            shown = ", ".join(f"{n}={overrides.get(n)!r}" for n in self.names)
            raise LauncherError(f"trial {launch.number}: the recording {self.source!r} has no "
                                f"trial at {shown}; replay a search space within the "
                                "recorded grid's values")
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        log = launch.run_dir / "trial.log"
        log.write_text(f"replayed from {self.source}\n", encoding="utf-8")
        (launch.run_dir / "events.jsonl").touch()
        now = time.time()
        return ReplayRun(trial_id=launch.trial_id, run_dir=launch.run_dir, started=now,
                         begun=now, log=log, recorded=recorded)

    def wait_any(self, timeout: float) -> None:
        """A replay is always ready: the next validation is written at the next look."""

    def signal(self, run: Run, sig: Signals) -> None:
        """A stop ends the replay where it is."""
        assert isinstance(run, ReplayRun)
        run.stopped = True

    def reap(self, run: Run) -> int | None:
        """Write the next recorded validation; the recorded exit once all are written."""
        assert isinstance(run, ReplayRun)
        if run.code is not None:
            return run.code
        if run.stopped:
            run.code = EXIT_SIGTERM
            return run.code
        rec = run.recorded
        with open(run.run_dir / "events.jsonl", "a", encoding="utf-8") as f:
            if run.shown < len(rec.validations):
                f.write(json.dumps({**rec.validations[run.shown], "time": time.time()}) + "\n")
                run.shown += 1
                return None
            f.write(json.dumps({"event": "run_finished", "time": time.time(),
                                "status": rec.state}) + "\n")
        (run.run_dir / "result.json").write_text(json.dumps(rec.result), encoding="utf-8")
        run.code = EXIT_OF.get(TrialState(rec.state), EXIT_CRASHED)
        return run.code

    def close(self) -> None:
        """Nothing to release."""
