"""The rows the ledger reads back: a trial with its JSON columns decoded, a validation point."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from orchestrator.states import INTERRUPTED, TrialState


@dataclass
class Trial:
    """One row of `trials`, with JSON columns decoded."""

    id: int
    sweep: str
    number: int
    config_hash: str
    params: dict[str, Any]
    state: TrialState
    reason: str | None
    exit_code: int | None
    attempts: int
    created_at: float | None
    started_at: float | None
    ended_at: float | None
    run_dir: str | None
    pid: int | None
    pgid: int | None
    slot: int | None
    device: str | None
    step: int | None
    max_steps: int | None
    last_metric: float | None
    best_metric: float | None
    final: dict[str, Any]
    best: dict[str, Any]
    program_wall: float | None
    job: str | None = None  # the launcher's id of the latest attempt outside orch (Slurm job)
    # The latest attempt's result.json values besides final/best/config (ledger_schema's
    # result_record): tokens_per_s, parameters, wall_time_s, ...; empty until it ends.
    result: dict[str, Any] = field(default_factory=dict)
    # The whole config the program resolved (result.json's `config`), when it reported one.
    config: dict[str, Any] = field(default_factory=dict)
    # `SWEEP/N` when this trial's result was reused from that finished trial, not run here.
    reused_from: str | None = None

    @property
    def point(self) -> str:
        """Its parameters as one line, `optim.lr=0.003 model.n_layer=2`, for progress lines."""
        return " ".join(f"{k}={v}" for k, v in self.params.items()) or "(base config)"

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C, `orch stop` or a fault of orch, not for itself: a resume runs it
        again."""
        return self.state == TrialState.STOPPED and self.reason == INTERRUPTED

    @property
    def origin(self) -> str:
        """Where its result was computed: `SWEEP/N` (for a reused trial, the original)."""
        return self.reused_from or f"{self.sweep}/{self.number}"

    @property
    def reused_note(self) -> str:
        """`reused from SWEEP/N` for a trial taken from another sweep, else empty."""
        return f"reused from {self.reused_from}" if self.reused_from else ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Trial:
        d = dict(row)
        return cls(
            id=d["id"], sweep=d["sweep"], number=d["number"], config_hash=d["config_hash"],
            params=json.loads(d["params_json"]), state=TrialState(d["state"]),
            reason=d["reason"],
            exit_code=d["exit_code"], attempts=d["attempts"], created_at=d["created_at"],
            started_at=d["started_at"], ended_at=d["ended_at"], run_dir=d["run_dir"],
            pid=d["pid"], pgid=d["pgid"], slot=d["slot"], device=d["device"], step=d["step"],
            max_steps=d["max_steps"], last_metric=d["last_metric"],
            best_metric=d["best_metric"], final=json.loads(d["final_json"] or "{}"),
            best=json.loads(d["best_json"] or "{}"), program_wall=d["program_wall"],
            job=d["job"], result=json.loads(d["result_json"] or "{}"),
            config=json.loads(d.get("config_json") or "{}"), reused_from=d.get("reused_from"))


@dataclass
class Validation:
    """One validation point of an attempt: its step, unix time and metrics."""

    step: int | None
    time: float | None
    metrics: dict[str, Any]
