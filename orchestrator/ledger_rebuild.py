"""Rebuilding the ledger from the run dirs, and the records beside them that make it possible.

Each sweep dir `ORCH_HOME/runs/SWEEP/` holds `sweep.json` (the spec as the ledger has it); each
run dir `NNN-HASH[.aK]/` holds `trial.json` (trial number, attempt, config hash, parameters),
the trainer's `events.jsonl` and `result.json`, and `outcome.json` (orch's verdict on the
attempt). A lost or corrupt ledger is rebuilt from these: every sweep, trial and attempt with
its state, final result and validation history. An attempt that left no verdict (it was running
when the ledger broke) comes back `pending`, so the next `orch sweep` runs it again.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.contract import (EventTail, describe_recorded, judge, read_result,
                                   reported_metrics)
from orchestrator.ledger import Ledger
from orchestrator.ledger_file import LedgerError, backup_path, run_dirs
from orchestrator.states import SweepState, TrialState

NO_VERDICT = "rebuilt: the attempt left no result; re-run"


def write_sweep(home: Path, name: str, **row: Any) -> None:
    """Record the sweep's ledger row (spec_path, spec, varied, metric, goal) in its sweep dir."""
    sweep_dir = home / "runs" / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": name, **row}, indent=2))


def write_outcome(run_dir: Path, **verdict: Any) -> None:
    """Record orch's verdict on one attempt (state, reason, exit_code, times) in its run dir."""
    (run_dir / "outcome.json").write_text(json.dumps(verdict, indent=2))


@dataclass
class Rebuilt:
    """What a rebuild restored."""

    sweeps: list[str]
    trials: int
    attempts: int
    rerun: int  # trials whose last attempt left no verdict: back to pending
    kept: Path | None  # where the replaced ledger file was moved
    # Run dirs whose result.json is there but unreadable: metrics from events.jsonl instead.
    unreadable: list[Path] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_intact(path: Path) -> bool:
    """Whether the file opens as an SQLite database and passes SQLite's quick check."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute("PRAGMA quick_check(1)").fetchone()[0] == "ok"
        finally:
            db.close()
    except sqlite3.Error:
        return False


def _set_aside(path: Path, why: str) -> Path | None:
    """Move the ledger (and its -wal/-shm) to ledger.sqlite.WHY-TIME; the new name or None."""
    if not path.exists():
        return None
    kept = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("-wal", "-shm", ""):
        part = path.with_name(path.name + suffix)
        if part.exists():
            os.replace(part, kept.with_name(kept.name + suffix))
    return kept


def _refuse_intact(path: Path, force: bool, command: str) -> str:
    intact = is_intact(path)
    if intact and not force:
        raise LedgerError(f"{path} is intact: `{command} --force` replaces it (it is kept "
                          f"aside as {path.name}.replaced-TIME)", code=2)
    return "replaced" if intact else "broken"


def restore(home: Path, force: bool = False) -> Path | None:
    """Put the automatic backup back in place of the ledger; where the old file went."""
    path = home / "ledger.sqlite"
    bak = backup_path(path)
    if not is_intact(bak):
        raise LedgerError(f"no usable backup at {bak}: `orch ledger rebuild` rebuilds the "
                          f"ledger from the run dirs instead", code=2)
    why = _refuse_intact(path, force, "orch ledger restore")
    tmp = path.with_name(path.name + ".restoring")
    shutil.copyfile(bak, tmp)
    kept = _set_aside(path, why)
    os.replace(tmp, path)
    return kept


def rebuild(home: Path, force: bool = False) -> Rebuilt:
    """Rebuild ORCH_HOME/ledger.sqlite from the run dirs; a ledger that is still intact is
    replaced only with `force`. The old file is kept aside, never deleted."""
    path = home / "ledger.sqlite"
    if not run_dirs(home):
        raise LedgerError(f"nothing to rebuild from: {home / 'runs'} holds no run dirs "
                          f"(with a trial.json)", code=2)
    why = _refuse_intact(path, force, "orch ledger rebuild")
    # Built in a scratch home and moved in whole, so a failed rebuild leaves things as they were.
    scratch = home / ".rebuild"
    shutil.rmtree(scratch, ignore_errors=True)
    ledger = Ledger(scratch)
    try:
        report = Rebuilt([], 0, 0, 0, None)
        for sweep_dir in sorted({d.parent for d in run_dirs(home)}):
            _rebuild_sweep(ledger, sweep_dir, report)
    finally:
        ledger.close()  # the last connection checkpoints the WAL into the file
    report.kept = _set_aside(path, why)
    os.replace(scratch / "ledger.sqlite", path)
    shutil.rmtree(scratch, ignore_errors=True)
    return report


def _rebuild_sweep(ledger: Ledger, sweep_dir: Path, report: Rebuilt) -> None:
    name = sweep_dir.name
    attempts: dict[int, list[tuple[int, Path, dict[str, Any]]]] = {}
    for run_dir in sorted(p for p in sweep_dir.iterdir() if (p / "trial.json").is_file()):
        info = _read_json(run_dir / "trial.json")
        if info is None or not isinstance(info.get("trial"), int):
            continue
        attempts.setdefault(info["trial"], []).append((int(info.get("attempt") or 1), run_dir,
                                                       info))
    meta = _read_json(sweep_dir / "sweep.json") or {}
    params = [info.get("params") or {} for runs in attempts.values() for _, _, info in runs]
    varied = meta.get("varied") or sorted(
        {k for p in params for k in p if len({json.dumps(q.get(k)) for q in params}) > 1})
    metric, goal = meta.get("metric") or "val_loss", meta.get("goal") or "minimize"
    # The metrics a run without a readable result.json keeps, as the run loop records them.
    names = describe_recorded((meta.get("spec") or {}).get("program")).metric_names() or [metric]
    ledger.upsert_sweep(name, meta.get("spec_path") or "", meta.get("spec") or {}, varied,
                        metric, goal)
    for number in sorted(attempts):
        runs = sorted(attempts[number], key=lambda a: a[0])
        if _rebuild_trial(ledger, name, number, runs, metric, goal, names, report.unreadable):
            report.rerun += 1
        report.trials += 1
        report.attempts += len(runs)
    ledger.release(name, SweepState.REBUILT)
    report.sweeps.append(name)


def _config_hash(runs: list[tuple[int, Path, dict[str, Any]]]) -> str:
    """The ledger key: trial.json's, else the trainer's (result.json), else the dir's prefix."""
    for _, run_dir, info in runs:
        key = info.get("config_hash") or (read_result(run_dir) or {}).get("config_hash")
        if isinstance(key, str) and key:
            return key
    return runs[0][1].name.split("-", 1)[-1].split(".")[0]


def _rebuild_trial(ledger: Ledger, sweep: str, number: int,
                   runs: list[tuple[int, Path, dict[str, Any]]], metric: str, goal: str,
                   names: list[str], unreadable: list[Path]) -> bool:
    """One trial and its attempts, in order; True when it goes back to pending. An attempt
    without a readable result.json keeps its last validation's `names` (the program's
    metrics) as its final, as the run loop records it."""
    trial = ledger.add_trial(sweep, _config_hash(runs), runs[0][2].get("params") or {},
                             number=number)
    for i, (attempt, run_dir, _) in enumerate(runs):
        outcome = _read_json(run_dir / "outcome.json") or {}
        result = read_result(run_dir)
        started = outcome.get("started_at") or (run_dir / "trial.json").stat().st_mtime
        ledger.mark_running(trial.id, pid=None, pgid=None, run_dir=str(run_dir), slot=None,
                            started_at=started)
        tail = EventTail(run_dir / "events.jsonl")
        validations = tail.poll()
        if tail.device is not None:  # what the program reported it ran on
            ledger.set_device(trial.id, tail.device)
        if validations or tail.step is not None:
            ledger.record_progress(trial.id, attempt, tail.step, tail.max_steps, validations,
                                   metric, goal)
        if outcome.get("state") in {s.value for s in TrialState}:
            state = TrialState(outcome["state"])
            reason, code = outcome.get("reason"), outcome.get("exit_code")
        elif result is not None:
            code = result.get("exit_code") if isinstance(result.get("exit_code"), int) else None
            verdict = judge(code, run_dir)
            state, reason = verdict.state, verdict.reason
        elif i == len(runs) - 1:
            ledger.requeue(trial.id, NO_VERDICT, refund_attempt=True)
            return True
        else:
            state, reason, code = TrialState.KILLED, "no result (rebuilt from the run dir)", None
        if result is None and (run_dir / "result.json").exists():
            unreadable.append(run_dir)
        result = result or {}
        final, best = reported_metrics(result, tail, names)
        ended = outcome.get("ended_at") or ((run_dir / "result.json").stat().st_mtime
                                            if (run_dir / "result.json").exists() else started)
        ledger.finish(trial.id, state=state, reason=reason, exit_code=code, ended_at=ended,
                      final=final, best=best,
                      program_wall=outcome.get("program_wall"),
                      config=result.get("config") if isinstance(result.get("config"), dict)
                      else None, result=result)
    return False
