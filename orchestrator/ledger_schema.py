"""The ledger's tables, and the migrations that bring a ledger an older orch made up to them.

SQLite's `user_version` holds the schema version. Opening a ledger that may be written creates
the tables or runs the migrations it misses, once, in one transaction; a read-only open of an
older ledger migrates a copy in memory and leaves the file as it is (the next writing command
migrates it). Each migration is idempotent, so a ledger made before versions existed (version 0,
some later columns already there) goes through all of them safely.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Callable

# The tables as this version has them; `IF NOT EXISTS`, so an older ledger keeps its rows.
TABLES = (
    """CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    spec_path TEXT, spec_json TEXT, varied_json TEXT, metric TEXT, goal TEXT,
    state TEXT NOT NULL DEFAULT 'created',
    stop_requested INTEGER NOT NULL DEFAULT 0,
    owner_pid INTEGER, owner_start TEXT, owner_host TEXT,
    created_at REAL, updated_at REAL,
    wandb_sweep TEXT
)""",
    """CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep TEXT NOT NULL REFERENCES sweeps(name),
    number INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    params_json TEXT NOT NULL, config_json TEXT,
    state TEXT NOT NULL, reason TEXT, exit_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL, started_at REAL, ended_at REAL,
    run_dir TEXT, pid INTEGER, pgid INTEGER, slot INTEGER, device TEXT,
    step INTEGER, max_steps INTEGER, last_metric REAL, best_metric REAL,
    final_json TEXT, best_json TEXT, program_wall REAL,
    job TEXT, result_json TEXT, reused_from TEXT,
    UNIQUE (sweep, config_hash)
)""",
    """CREATE TABLE IF NOT EXISTS metrics (
    trial_id INTEGER NOT NULL REFERENCES trials(id),
    attempt INTEGER NOT NULL, step INTEGER, time REAL, values_json TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS metrics_trial ON metrics (trial_id, attempt)",
)


def result_record(result: dict[str, Any] | None) -> dict[str, Any]:
    """What the ledger keeps of a result.json besides final, best and config (their own
    columns): its plain values (status, steps, tokens_per_s, parameters, wall_time_s, ...)."""
    return {k: v for k, v in (result or {}).items() if not isinstance(v, (dict, list))}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def _add_column(db: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    if column not in _columns(db, table):
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _job(db: sqlite3.Connection) -> None:
    """1: the launcher's id of a trial's latest attempt outside orch (a Slurm job)."""
    _add_column(db, "trials", "job", "TEXT")


def _wandb_sweep(db: sqlite3.Connection) -> None:
    """2: the W&B sweep a ledger sweep stands for, as a column; older ledgers kept it in the
    stored spec (`spec.wandb.path`), from where it is copied."""
    _add_column(db, "sweeps", "wandb_sweep", "TEXT")
    rows = db.execute("SELECT name, spec_json FROM sweeps WHERE wandb_sweep IS NULL").fetchall()
    for name, spec_json in rows:
        try:
            spec = json.loads(spec_json or "{}")
        except json.JSONDecodeError:
            continue
        recorded = spec.get("wandb") if isinstance(spec, dict) else None
        path = recorded.get("path") if isinstance(recorded, dict) else None
        if isinstance(path, str) and path:
            db.execute("UPDATE sweeps SET wandb_sweep=? WHERE name=?", (path, name))
    db.execute("CREATE INDEX IF NOT EXISTS sweeps_wandb ON sweeps (wandb_sweep)")


def _results(db: sqlite3.Connection) -> None:
    """3: each trial's result.json values (throughput, parameters, wall time) in the ledger,
    which reports read instead of the run dirs; older ledgers get them from the run dirs now."""
    # Imported here: the contract imports the ledger (through the schema cache).
    from orchestrator.contract import read_result

    _add_column(db, "trials", "result_json", "TEXT")
    rows = db.execute("SELECT id, run_dir FROM trials WHERE run_dir IS NOT NULL"
                      " AND result_json IS NULL").fetchall()
    for trial_id, run_dir in rows:
        result = read_result(Path(run_dir))
        if result is not None:
            db.execute("UPDATE trials SET result_json=? WHERE id=?",
                       (json.dumps(result_record(result)), trial_id))


def _reused_from(db: sqlite3.Connection) -> None:
    """4: where a trial's result came from when it was reused, not run (`SWEEP/N`, a finished
    trial of the same program and config hash in another sweep; spec `reuse: true`)."""
    _add_column(db, "trials", "reused_from", "TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS trials_hash ON trials (config_hash)")


# MIGRATIONS[i] brings a ledger from version i to i + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_job, _wandb_sweep, _results,
                                                                 _reused_from)
VERSION = len(MIGRATIONS)


def version(db: sqlite3.Connection) -> int:
    """The ledger's schema version (0: made before versions, or empty)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def upgrade(db: sqlite3.Connection) -> None:
    """Create the tables, or migrate an older ledger to VERSION, in one transaction (the
    connection is in autocommit mode). A ledger a newer orch made is left as it is."""
    if version(db) >= VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        current = version(db)  # another process may have migrated it while this one waited
        if current < VERSION:
            for statement in TABLES:
                db.execute(statement)
            for migrate in MIGRATIONS[current:]:
                migrate(db)
            db.execute(f"PRAGMA user_version={VERSION}")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
