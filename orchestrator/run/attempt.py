"""One trial attempt: its run dir, what the run loop follows while it runs (Live), and how it
ended (the verdict of its exit code, result.json and what the launcher saw; the metrics it left;
record_end writes that down and queues a retry).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.contract import (EXIT_BAD_INPUT, EventTail, Outcome, finite, judge,
                                   reported_metrics)
from orchestrator.launch.command import TrialCommand
from orchestrator.launch.protocol import Run
from orchestrator.ledger import Ledger, Trial
from orchestrator.ledger_rebuild import write_outcome
from orchestrator.run.slots import Slot
from orchestrator.spec.plan import Plan
from orchestrator.states import RETRYABLE, TrialState

@dataclass
class Live:
    """A running attempt and what the loop knows about it."""

    run: Run
    trial: Trial
    slot: Slot
    tail: EventTail
    attempt: int
    device: str | None = None  # recorded from the program's device_info event


def attempt_dir(home: Path, sweep: str, trial: Trial, attempt: int) -> Path:
    """ORCH_HOME/runs/SWEEP/NNN-HASH8 for a first attempt, with `.aN` for attempt N > 1."""
    run_dir = home / "runs" / sweep / f"{trial.number:03d}-{trial.config_hash[:8]}"
    return run_dir.with_name(f"{run_dir.name}.a{attempt}") if attempt > 1 else run_dir


def set_aside(run_dir: Path) -> Path | None:
    """Move what an interrupted launch left in run_dir to runs/SWEEP/interrupted/; where it went.

    The re-run of the attempt then starts with no events of the cut-short one (the trainer
    appends), and `orch sync` (runs/SWEEP/*/wandb) does not upload its partial W&B run.
    """
    if not run_dir.exists():
        return None
    aside = run_dir.parent / "interrupted"
    aside.mkdir(exist_ok=True)
    target = next(aside / f"{run_dir.name}.{n}" for n in itertools.count(1)
                  if not (aside / f"{run_dir.name}.{n}").exists())
    return run_dir.rename(target)


def host_env(slot: Slot, home: Path, run_dir: Path) -> dict[str, str]:
    """The attempt's environment here: ours, its slot's (GPU, threads), and where it writes."""
    return {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1",
            "ORCH_CACHE_DIR": os.environ.get("ORCH_CACHE_DIR") or str(home / "cache"),
            "WANDB_DIR": str(run_dir)}


def write_trial_json(sweep: str, trial: Trial, attempt: int, command: TrialCommand) -> None:
    """RUN_DIR/trial.json: which trial and attempt the run dir holds, and its command here."""
    command.out.mkdir(parents=True, exist_ok=True)
    (command.out / "trial.json").write_text(json.dumps(
        {"sweep": sweep, "trial": trial.number, "attempt": attempt,
         "config_hash": trial.config_hash, "params": trial.params, "argv": command.host()},
        indent=2))


def outcome(run: Run, code: int) -> Outcome:
    """The attempt's verdict: the contract's (exit code, result.json, why orch stopped it),
    unless the launcher saw more (Slurm's time limit, an OOM)."""
    out = judge(code, run.run_dir, timed_out=run.timed_out, stop_reason=run.stop_reason)
    if run.verdict and out.state != TrialState.FINISHED and not run.timed_out \
            and run.stop_reason is None:  # what only the launcher saw (Slurm's time limit)
        out = Outcome(*run.verdict, out.result)
    # The launcher saw the OOM happen.
    if run.oom and out.state in (TrialState.FAILED, TrialState.KILLED):
        out = Outcome(TrialState.OOM, run.oom, out.result)
    return out


def record_end(plan: Plan, ledger: Ledger, live: Live, code: int, note: Callable[[str], None],
               interrupted: bool) -> None:
    """Record how the attempt ended (ledger and run dir), say so, and queue a retry when the
    spec allows one: not for bad input (it fails again) nor while the sweep is stopping."""
    run, ended = live.run, time.time()
    out = outcome(run, code)
    result = out.result or {}
    names = plan.described.metric_names() or [plan.spec.metric.name]
    final, best = reported_metrics(result, live.tail, names)
    config = result.get("config")
    ledger.finish(live.trial.id, state=out.state, reason=out.reason, exit_code=code,
                  ended_at=ended, final=final, best=best, program_wall=ended - run.started,
                  config=config if isinstance(config, dict) else None, result=out.result)
    write_outcome(run.run_dir, state=out.state, reason=out.reason, exit_code=code,
                  started_at=run.started, ended_at=ended, program_wall=ended - run.started)
    metric = finite((final or {}).get(plan.spec.metric.name))
    shown = f" {plan.spec.metric.name}={metric:.4f}" if metric is not None else ""
    note(f"trial {live.trial.number} {out.state}{shown}"
         + (f" ({out.reason})" if out.reason else ""))
    retries = plan.spec.resources.retries
    if (out.state in RETRYABLE and code != EXIT_BAD_INPUT and not interrupted
            and live.attempt <= retries):
        ledger.requeue(live.trial.id, f"retry {live.attempt}/{retries} after: {out.reason}",
                       refund_attempt=False)
