"""W&B runs, as the public API returns them, into the ledger: then `orch results`, `status` and
`plot` show a W&B sweep exactly as a local one.

A run object is `wandb.apis.public.Run`: `id` (the run id), `name` (display name), `state`
(running, pending, finished, failed, crashed, killed, preempting, preempted), `config` (user
keys, values unwrapped from W&B's {value: ...} form), `summary_metrics` and `created_at` /
`heartbeat_at` (ISO times, via its attribute lookup of the GraphQL fields). History rows are
what `Run.scan_history()` yields: dicts with `_step`, `_timestamp`, `_runtime` and the logged keys.

Honest states: W&B marks a run `finished` or `failed` from its exit code alone, so the trainer
also writes `status` and `reason` (as in result.json) into the summary, and a run is imported as
`finished` only when W&B and the trainer both say so.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from orchestrator.contract import describe_recorded, finite, read_result
from orchestrator.ledger import Ledger, Trial
from orchestrator.search import varied
from orchestrator.spec.model import SweepSpec
from orchestrator.states import SweepState, TrialState
from orchestrator.wandb.cloud import RemoteSweep
from orchestrator.wandb.sweep_config import flat_parameters


class RunLike(Protocol):
    """The parts of `wandb.apis.public.Run` the import reads."""

    id: str
    state: str
    config: dict[str, Any]
    summary_metrics: dict[str, Any]


def trial_state(wandb_state: str, summary: dict[str, Any]) -> tuple[TrialState, str | None]:
    """The ledger state and reason of a W&B run, from its state and the trainer's summary
    (W&B's run states and the trainer's statuses are their own words, compared as such)."""
    status, reason = summary.get("status"), summary.get("reason")
    if wandb_state in ("running", "pending"):
        return TrialState(wandb_state), None
    if wandb_state == "finished":
        if status == "finished":
            return TrialState.FINISHED, None
        said = f"the trainer's summary says {status!r}" if status else "no trainer status"
        return TrialState.FAILED, f"W&B says finished but {said}"
    if wandb_state == "failed":
        if status in ("diverged", "stopped"):
            return TrialState(status), reason
        if str(reason or "").startswith("oom"):
            return TrialState.OOM, reason
        return TrialState.FAILED, reason or "failed on W&B (non-zero exit)"
    if wandb_state == "crashed":
        return TrialState.FAILED, "crashed on W&B: the run stopped sending heartbeats"
    if wandb_state in ("killed", "preempting", "preempted"):
        return TrialState.KILLED, f"{wandb_state} on W&B"
    return TrialState.FAILED, f"unknown W&B run state {wandb_state!r}"


def lookup(config: dict[str, Any], name: str) -> Any:
    """A dotted parameter from a run config, stored flat (`optim.lr`) or nested."""
    if name in config:
        return config[name]
    node: Any = config
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def history_rows(rows: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """The validation rows of a run's history, as ledger metric rows {step, time, metrics}."""
    out = []
    for row in rows:
        values = {m: finite(row.get(m)) for m in metrics}
        if all(v is None for v in values.values()):
            continue  # a training_step row (train_loss, lr)
        out.append({"step": row.get("_step"), "time": row.get("_timestamp"), **values})
    return out


def _epoch(text: Any) -> float | None:
    """Seconds since the epoch from W&B's ISO time (UTC, with or without a Z)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


def _int(value: Any) -> int | None:
    v = finite(value)
    return None if v is None else int(v)


def import_run(ledger: Ledger, sweep: str, run: RunLike, history: list[dict[str, Any]],
               names: list[str], metric: str, goal: str, runs_dir: Path,
               metrics: list[str] | None = None) -> Trial:
    """One W&B run as a ledger trial, keyed by its run id (a rerun of a config is its own);
    `metrics`: the names the program reports (default: the sweep metric)."""
    metrics = metrics or [metric]
    summary = dict(run.summary_metrics or {})
    config = dict(run.config or {})
    state, reason = trial_state(run.state, summary)
    final = {m: finite(summary.get(f"final_{m}")) for m in metrics}
    best = {m: finite(summary.get(f"best_{m}")) for m in metrics}
    best["step"] = _int(summary.get("best_step"))
    rows = history_rows(history, metrics)
    if all(v is None for v in final.values()) and rows:  # a run that ended without a summary
        final = {m: rows[-1].get(m) for m in metrics}
    scores = [r[metric] for r in rows if r.get(metric) is not None]
    pick = min if goal == "minimize" else max
    run_dir = runs_dir / run.id  # the command's --out, when the run ran on this workstation
    started = _epoch(getattr(run, "created_at", None))
    going = state in (TrialState.RUNNING, TrialState.PENDING)
    ended = None if going else _epoch(getattr(run, "heartbeat_at", None))
    columns = {
        "state": state, "reason": reason, "exit_code": _int(summary.get("exit_code")),
        "started_at": started, "ended_at": ended,
        "run_dir": str(run_dir) if run_dir.is_dir() else None,
        "step": _int(summary.get("steps", summary.get("_step"))),
        "max_steps": _int(summary.get("max_steps")),
        "last_metric": scores[-1] if scores else final.get(metric),
        "best_metric": pick(scores) if scores else best.get(metric),
        "program_wall": finite(summary.get("wall_time_s", summary.get("_runtime"))),
    }
    resolved = config.get("resolved") if isinstance(config.get("resolved"), dict) else None
    params = {n: lookup(config, n) for n in names}
    # The trainer's result.json, when the run ran here: what the summary leaves out (throughput).
    result = read_result(run_dir) if run_dir.is_dir() else None
    return ledger.import_trial(sweep, f"wandb-{run.id}", params, columns, final,
                               {k: v for k, v in best.items() if v is not None}, resolved, rows,
                               result)


def ledger_name(ledger: Ledger, remote: RemoteSweep) -> str:
    """The ledger sweep for a W&B sweep: the one `orch sweep` recorded it under, else the W&B
    config's name (suffixed with the id if a local sweep already has that name), else its id."""
    row = ledger.wandb_sweep(remote.ref.path)
    if row is not None:
        return str(row["name"])
    name = str(remote.config.get("name") or f"wandb-{remote.ref.id}")
    return f"{name}-{remote.ref.id}" if ledger.sweep(name) is not None else name


def import_sweep(ledger: Ledger, remote: RemoteSweep, home: Path) -> str:
    """Every run of a W&B sweep into the ledger; returns the ledger sweep's name."""
    name = ledger_name(ledger, remote)
    parameters = remote.config.get("parameters") or {}
    metric_cfg = remote.config.get("metric") or {}
    metric = str(metric_cfg.get("name") or "val_loss")
    goal = str(metric_cfg.get("goal") or "minimize")
    existing = ledger.sweep(name)
    spec = existing["spec"] if existing else {"search": remote.config}
    ledger.upsert_sweep(name, existing["spec_path"] if existing else "", spec,
                        existing["varied"] if existing else varied(parameters), metric, goal,
                        wandb_sweep=remote.ref.path)
    names = list(flat_parameters(parameters))
    # A sweep W&B knows but this ledger does not ran the default program.
    described = describe_recorded(spec.get("program") or SweepSpec.model_fields["program"].default)
    metrics = list(dict.fromkeys([metric, *described.metric_names()]))
    # Run dirs follow the command's --out: ORCH_HOME/runs/<W&B sweep name>/<run id>.
    runs_dir = home / "runs" / str(remote.config.get("name") or name)
    for run in sorted(remote.runs, key=lambda r: _epoch(getattr(r, "created_at", None))
                      or math.inf):
        import_run(ledger, name, run, remote.histories.get(run.id, []), names, metric, goal,
                   runs_dir, metrics)
    state = remote.state.lower()  # RUNNING, PAUSED, CANCELED, FINISHED
    # `orch ls` reads a bare `running` without a live local owner as interrupted.
    ledger.release(name, SweepState.ON_WANDB if state == "running" else state)
    return name
