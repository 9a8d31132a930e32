"""The ledger: one SQLite file (WAL) under ORCH_HOME, the source of truth for sweeps and trials.

A trial is keyed by (sweep, config hash), so a resumed sweep runs only what is missing. Every
state change is one short transaction, so a kill -9 at any moment leaves a readable ledger; a
trial left `running` by a dead orchestrator is recognised by its owner's pid and start time.
The tables and their migrations are in ledger_schema, the rows read back in ledger_rows.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from orchestrator import ledger_file, ledger_schema
from orchestrator.ledger_rows import Trial, Validation
from orchestrator.process import alive, process_start
from orchestrator.states import SweepState, TrialState

# The keys of a validation_step event that say where the run is, not what it measured.
PROGRESS_KEYS = ("event", "time", "step", "max_steps")


def orch_home() -> Path:
    """ORCH_HOME, else ./.orch (like wandb/)."""
    return Path(os.environ.get("ORCH_HOME") or ".orch").resolve()


class Ledger:
    """All reads and writes of the ledger file."""

    def __init__(self, home: Path, readonly: bool = False) -> None:
        """Open (or create) ORCH_HOME/ledger.sqlite; `readonly` never writes it (read commands).
        Faults of the file (read-only, corrupt, full, lost beside run dirs) raise LedgerError."""
        self.home = home
        self.path = home / "ledger.sqlite"
        if home.exists() and not home.is_dir():
            raise ledger_file.LedgerError(f"ORCH_HOME {home} is a file, not a folder: point "
                                          "it at a folder (ledger and run dirs)", code=2)
        if not readonly:
            try:
                home.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise (ledger_file.describe(e, self.path) or e) from None
        # Autocommit; multi-statement changes use explicit BEGIN IMMEDIATE.
        self.db = ledger_file.connect(self.path, readonly)
        self.db.row_factory = sqlite3.Row
        ledger_file.check_intact(self.db)  # a malformed page found now, not mid-sweep
        if readonly:
            if ledger_schema.version(self.db) < ledger_schema.VERSION:
                if self.path.exists():  # an older orch's ledger: read a copy migrated in memory
                    self.db = ledger_file.copy_to_memory(self.db, self.path)
                    self.db.row_factory = sqlite3.Row
                ledger_schema.upgrade(self.db)  # (with nothing recorded yet: empty tables)
            return
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process kill
        self.db.execute("PRAGMA busy_timeout=30000")
        ledger_schema.upgrade(self.db)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def backup(self) -> Path:
        """Copy the ledger to ledger.sqlite.bak (SQLite's online backup); its path."""
        return ledger_file.backup(self.db, self.path)

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    # -- sweeps ---------------------------------------------------------------------------------

    def upsert_sweep(self, name: str, spec_path: str, spec: dict[str, Any], varied: list[str],
                     metric: str, goal: str, wandb_sweep: str | None = None) -> bool:
        """Create the sweep, or refresh its spec; True when it already existed (a resume).
        `wandb_sweep` (ENTITY/PROJECT/ID) records the W&B sweep it stands for; None keeps any."""
        now = time.time()
        with self._tx():
            existed = self.db.execute("SELECT 1 FROM sweeps WHERE name=?", (name,)).fetchone()
            if existed:
                self.db.execute(
                    "UPDATE sweeps SET spec_path=?, spec_json=?, varied_json=?, metric=?, goal=?,"
                    " wandb_sweep=COALESCE(?, wandb_sweep), updated_at=? WHERE name=?",
                    (spec_path, json.dumps(spec), json.dumps(varied), metric, goal, wandb_sweep,
                     now, name))
            else:
                self.db.execute(
                    "INSERT INTO sweeps (name, spec_path, spec_json, varied_json, metric, goal,"
                    " wandb_sweep, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (name, spec_path, json.dumps(spec), json.dumps(varied), metric, goal,
                     wandb_sweep, now, now))
        return bool(existed)

    def sweep(self, name: str) -> dict[str, Any] | None:
        """The sweep's row as a dict (JSON columns decoded), or None."""
        row = self.db.execute("SELECT * FROM sweeps WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["spec"] = json.loads(d.pop("spec_json") or "{}")
        d["varied"] = json.loads(d.pop("varied_json") or "[]")
        return d

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep with its trial counts per state."""
        out = []
        for row in self.db.execute("SELECT name FROM sweeps ORDER BY created_at"):
            d = self.sweep(row["name"]) or {}
            counts = self.db.execute("SELECT state, COUNT(*) n FROM trials WHERE sweep=? "
                                     "GROUP BY state", (row["name"],)).fetchall()
            d["counts"] = {r["state"]: r["n"] for r in counts}
            d["owner_alive"] = alive(d.get("owner_pid"), d.get("owner_start"))
            out.append(d)
        return out

    def wandb_sweep(self, path: str) -> dict[str, Any] | None:
        """The sweep recorded for the W&B sweep ENTITY/PROJECT/ID (as `sweep` gives it), or
        None; the latest recorded if several are."""
        row = self.db.execute("SELECT name FROM sweeps WHERE wandb_sweep=? ORDER BY created_at"
                              " DESC LIMIT 1", (path,)).fetchone()
        return self.sweep(row["name"]) if row else None

    def live_owner(self, name: str) -> dict[str, Any] | None:
        """The sweep's row when another live process owns it (it runs the sweep), else None."""
        row = self.sweep(name)
        if row and row["owner_pid"] != os.getpid() and alive(row["owner_pid"],
                                                            row["owner_start"]):
            return row
        return None

    def claim(self, name: str) -> dict[str, Any] | None:
        """Make this process the sweep's owner; return the live other owner's row if any."""
        me, start = os.getpid(), process_start(os.getpid())
        with self._tx():
            row = self.db.execute("SELECT owner_pid, owner_start FROM sweeps WHERE name=?",
                                  (name,)).fetchone()
            if row and row["owner_pid"] != me and alive(row["owner_pid"], row["owner_start"]):
                return dict(row)
            self.db.execute(
                "UPDATE sweeps SET owner_pid=?, owner_start=?, owner_host=?, state=?,"
                " stop_requested=0, updated_at=? WHERE name=?",
                (me, start, socket.gethostname(), SweepState.RUNNING, time.time(), name))
        return None

    def release(self, name: str, state: SweepState | str) -> None:
        """Record the sweep's end state and drop ownership (a str: an imported W&B sweep's)."""
        self.db.execute("UPDATE sweeps SET state=?, owner_pid=NULL, owner_start=NULL,"
                        " updated_at=? WHERE name=?", (state, time.time(), name))

    def request_stop(self, name: str) -> bool:
        """Ask the sweep's orchestrator to stop (it polls the flag); False if no such sweep."""
        cur = self.db.execute("UPDATE sweeps SET stop_requested=1 WHERE name=?", (name,))
        return cur.rowcount > 0

    def stop_requested(self, name: str) -> bool:
        """Whether `orch stop` asked this sweep to stop."""
        row = self.db.execute("SELECT stop_requested FROM sweeps WHERE name=?",
                              (name,)).fetchone()
        return bool(row and row["stop_requested"])

    # -- trials ---------------------------------------------------------------------------------

    def trials(self, sweep: str) -> list[Trial]:
        """The sweep's trials in creation order."""
        rows = self.db.execute("SELECT * FROM trials WHERE sweep=? ORDER BY number", (sweep,))
        return [Trial.from_row(r) for r in rows]

    def finished_walls(self) -> list[dict[str, Any]]:
        """Every finished trial with its measured wall time, in any sweep: program (the sweep
        spec's), config (result.json's), device, program_wall; what run-time estimates use."""
        rows = self.db.execute(
            "SELECT s.spec_json, t.config_json, t.device, t.program_wall FROM trials t "
            "JOIN sweeps s ON s.name = t.sweep WHERE t.state = ? AND t.reused_from IS NULL "
            "AND t.config_json IS NOT NULL AND t.program_wall > 0", (TrialState.FINISHED,))
        return [{"program": json.loads(r["spec_json"] or "{}").get("program"),
                 "config": json.loads(r["config_json"]), "device": r["device"],
                 "program_wall": r["program_wall"]} for r in rows]

    def trial(self, trial_id: int) -> Trial:
        """One trial by id."""
        row = self.db.execute("SELECT * FROM trials WHERE id=?", (trial_id,)).fetchone()
        return Trial.from_row(row)

    def add_trial(self, sweep: str, config_hash: str, params: dict[str, Any],
                  state: TrialState = TrialState.PENDING, reason: str | None = None,
                  number: int | None = None) -> Trial:
        """Insert a trial (numbered 1, 2, ... within its sweep, unless `number` is given: a
        rebuild keeps the numbers of the run dirs) and return it."""
        with self._tx():
            n = number or self.db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM trials"
                                          " WHERE sweep=?", (sweep,)).fetchone()[0]
            cur = self.db.execute(
                "INSERT INTO trials (sweep, number, config_hash, params_json, state, reason,"
                " created_at) VALUES (?,?,?,?,?,?,?)",
                (sweep, n, config_hash, json.dumps(params), state, reason, time.time()))
        return self.trial(int(cur.lastrowid or 0))

    def mark_running(self, trial_id: int, *, pid: int | None, pgid: int | None, run_dir: str,
                     slot: int | None, started_at: float, job: str | None = None) -> None:
        """The trial's process (or job) has started: one more attempt. Its device stays unknown
        until the program reports one (`set_device`)."""
        self.db.execute(
            "UPDATE trials SET state=?, reason=NULL, exit_code=NULL, pid=?, pgid=?,"
            " run_dir=?, slot=?, device=NULL, started_at=?, ended_at=NULL, step=NULL,"
            " max_steps=NULL, last_metric=NULL, best_metric=NULL, attempts=attempts+1, job=?,"
            " result_json=NULL WHERE id=?",
            (TrialState.RUNNING, pid, pgid, run_dir, slot, started_at, job, trial_id))

    def set_device(self, trial_id: int, device: str) -> None:
        """The device the running attempt's program says it runs on (its device_info event)."""
        self.db.execute("UPDATE trials SET device=? WHERE id=?", (device, trial_id))

    def record_progress(self, trial_id: int, attempt: int, step: int | None,
                        max_steps: int | None, validations: list[dict[str, Any]],
                        metric: str, goal: str) -> None:
        """New progress from events.jsonl: step counters and validation metrics."""
        with self._tx():
            for v in validations:
                values = {k: v.get(k) for k in v if k not in PROGRESS_KEYS}
                self.db.execute("INSERT INTO metrics VALUES (?,?,?,?,?)",
                                (trial_id, attempt, v.get("step"), v.get("time"),
                                 json.dumps(values)))
            # Every point of a poll counts for the best (the search engines read best_metric).
            scores = [v[metric] for v in validations if isinstance(v.get(metric), (int, float))
                      and math.isfinite(v[metric])]
            last = scores[-1] if scores else None
            best = (min(scores) if goal == "minimize" else max(scores)) if scores else None
            pick = "MIN" if goal == "minimize" else "MAX"
            self.db.execute(
                f"UPDATE trials SET step=COALESCE(?, step), max_steps=COALESCE(?, max_steps),"
                f" last_metric=COALESCE(?, last_metric),"
                f" best_metric=CASE WHEN ? IS NULL THEN best_metric WHEN best_metric IS NULL"
                f" THEN ? ELSE {pick}(best_metric, ?) END WHERE id=?",
                (step, max_steps, last, best, best, best, trial_id))

    def history(self, trial: Trial) -> list[Validation]:
        """The validation points of the attempt that counts (the trial's latest), in order.

        Every reader of metric history (status, plots, hyperband, adoption) reads it here, so
        none sees the rows of an earlier attempt or of one an interruption cut short.
        """
        rows = self.db.execute("SELECT step, time, values_json FROM metrics WHERE trial_id=?"
                               " AND attempt=? ORDER BY rowid", (trial.id, trial.attempts))
        return [Validation(r["step"], r["time"], json.loads(r["values_json"])) for r in rows]

    def finish(self, trial_id: int, *, state: TrialState, reason: str | None, exit_code: int | None,
               ended_at: float, final: dict[str, Any] | None, best: dict[str, Any] | None,
               program_wall: float | None, config: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None) -> None:
        """The attempt ended: its honest state and what result.json said (`result`, the whole
        file: reports read its values from here, never from the run dir)."""
        self.db.execute(
            "UPDATE trials SET state=?, reason=?, exit_code=?, ended_at=?, final_json=?,"
            " best_json=?, program_wall=?, config_json=COALESCE(?, config_json), pid=NULL,"
            " result_json=? WHERE id=?",
            (state, reason, exit_code, ended_at, json.dumps(final or {}),
             json.dumps(best or {}), program_wall,
             json.dumps(config) if config is not None else None,
             json.dumps(ledger_schema.result_record(result)), trial_id))

    IMPORT_COLUMNS = ("state", "reason", "exit_code", "started_at", "ended_at", "run_dir", "step",
                      "max_steps", "last_metric", "best_metric", "program_wall")

    def import_trial(self, sweep: str, key: str, params: dict[str, Any], columns: dict[str, Any],
                     final: dict[str, Any], best: dict[str, Any], config: dict[str, Any] | None,
                     history: list[dict[str, Any]],
                     result: dict[str, Any] | None = None) -> Trial:
        """Insert or refresh a trial that ran elsewhere (a W&B run) as one finished attempt,
        its metric history replaced, so importing the same run again gives the same ledger.

        `columns` holds IMPORT_COLUMNS; each `history` item is {step, time, metric: value...};
        `result` is the run's result.json when it ran here.
        """
        row = self.db.execute("SELECT id FROM trials WHERE sweep=? AND config_hash=?",
                              (sweep, key)).fetchone()
        trial_id = row["id"] if row else self.add_trial(sweep, key, params, columns["state"]).id
        sets = ", ".join(f"{c}=?" for c in self.IMPORT_COLUMNS)
        with self._tx():
            self.db.execute(
                f"UPDATE trials SET {sets}, params_json=?, final_json=?, best_json=?,"
                f" config_json=?, result_json=?, attempts=1, pid=NULL WHERE id=?",
                (*[columns.get(c) for c in self.IMPORT_COLUMNS], json.dumps(params),
                 json.dumps(final), json.dumps(best),
                 json.dumps(config) if config is not None else None,
                 json.dumps(ledger_schema.result_record(result)), trial_id))
            self.db.execute("DELETE FROM metrics WHERE trial_id=?", (trial_id,))
            for h in history:
                values = {k: v for k, v in h.items() if k not in ("step", "time")}
                self.db.execute("INSERT INTO metrics VALUES (?,?,?,?,?)",
                                (trial_id, 1, h.get("step"), h.get("time"), json.dumps(values)))
        return self.trial(trial_id)

    def finished_elsewhere(self, sweep: str, config_hash: str) -> list[tuple[Trial, Any]]:
        """Finished trials of other sweeps with this config hash, each with its sweep spec's
        `program` as recorded: ones that were run before ones that were reused, earliest first
        (what a reusing sweep picks from)."""
        rows = self.db.execute(
            "SELECT t.*, s.spec_json FROM trials t JOIN sweeps s ON s.name = t.sweep WHERE"
            " t.config_hash=? AND t.sweep != ? AND t.state=? ORDER BY t.reused_from IS NOT"
            " NULL, t.ended_at, t.id", (config_hash, sweep, TrialState.FINISHED)).fetchall()
        return [(Trial.from_row(r), json.loads(r["spec_json"] or "{}").get("program"))
                for r in rows]

    def reuse(self, trial_id: int, source: Trial) -> str:
        """Record a pending trial as finished with `source`'s result, without running it: its
        metrics, result values, config and the validation history of its counted attempt (as
        attempt 0: nothing ran here). Where it came from (`SWEEP/N`, the original when `source`
        was itself reused) is returned and kept in `reused_from`. One transaction."""
        origin = source.origin
        copied = ("exit_code", "started_at", "ended_at", "run_dir", "device", "step",
                  "max_steps", "last_metric", "best_metric", "final_json", "best_json",
                  "program_wall", "config_json", "result_json")
        sets = ", ".join(f"{c}=(SELECT {c} FROM trials WHERE id=:src)" for c in copied)
        with self._tx():
            self.db.execute(f"UPDATE trials SET {sets}, state=:state, reason=NULL, pid=NULL,"
                            f" pgid=NULL, slot=NULL, job=NULL, attempts=0, reused_from=:origin"
                            f" WHERE id=:id", {"src": source.id, "state": TrialState.FINISHED,
                                               "origin": origin, "id": trial_id})
            self.db.execute("DELETE FROM metrics WHERE trial_id=?", (trial_id,))
            self.db.execute("INSERT INTO metrics SELECT ?, 0, step, time, values_json FROM"
                            " metrics WHERE trial_id=? AND attempt=? ORDER BY rowid",
                            (trial_id, source.id, source.attempts))
        return origin

    def requeue(self, trial_id: int, reason: str, refund_attempt: bool) -> None:
        """Back to pending: a retry, or an attempt an interruption cut short (refunded).

        A refunded attempt's number is run again, so its metric rows and progress go with it:
        the re-run's history starts empty instead of after the cut-short one's points.
        """
        with self._tx():
            if refund_attempt:
                self.db.execute("DELETE FROM metrics WHERE trial_id=? AND attempt=(SELECT"
                                " attempts FROM trials WHERE id=?)", (trial_id, trial_id))
                self.db.execute("UPDATE trials SET device=NULL, step=NULL, max_steps=NULL,"
                                " last_metric=NULL, best_metric=NULL WHERE id=?", (trial_id,))
            self.db.execute(
                "UPDATE trials SET state=?, reason=?, pid=NULL,"
                " attempts=attempts - ? WHERE id=?",
                (TrialState.PENDING, reason, 1 if refund_attempt else 0, trial_id))

    def recover(self, sweep: str, keep: set[int] | frozenset[int] = frozenset()) -> list[Trial]:
        """Trials to run again on resume: left `running` by a dead owner, or stopped by the user.

        Called after `claim`, so any `running` trial belongs to a previous, dead orchestrator;
        those in `keep` (ids of attempts the launcher adopted: Slurm jobs) stay running.
        """
        back = []
        for t in self.trials(sweep):
            if t.state == TrialState.RUNNING and t.id not in keep:
                self.requeue(t.id, "orchestrator died; re-run", refund_attempt=True)
                back.append(t)
            elif t.interrupted:
                self.requeue(t.id, "interrupted; re-run", refund_attempt=True)
                back.append(t)
        return back


class _Transaction:
    """`with ledger._tx():` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind and not self.db.in_transaction:
            return  # SQLite already rolled back (a full disk does): nothing to undo
        self.db.execute("ROLLBACK" if kind else "COMMIT")


def iter_states(trials: list[Trial]) -> Iterator[tuple[TrialState, int]]:
    """(state, count) pairs in TrialState's order, for summaries."""
    counts: dict[TrialState, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    for state in TrialState:
        if counts.get(state):
            yield state, counts[state]
