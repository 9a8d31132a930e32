"""The ledger file itself: opening it safely, naming its faults in one line, and its backup.

A ledger can be read-only (a read-only mount, an immutable file), corrupt (truncated, garbage,
a malformed page), empty or missing beside run dirs that a lost ledger once recorded, or it can
fill its disk mid-sweep. Each of these becomes a `LedgerError`: one line naming the file, what
is wrong and what to do, which the CLI prints instead of an sqlite traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

REBUILD = "orch ledger rebuild"
RESTORE = "orch ledger restore"
# sqlite error names (3.11's `sqlite_errorname`) that are faults of the file, not of the query.
FULL = ("SQLITE_FULL",)
READONLY = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")
CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
IOERR = ("SQLITE_IOERR",)
# OS errors under ORCH_HOME (run dirs) that are faults of the storage, not bugs.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class LedgerError(Exception):
    """A fault of the ledger file, as one line; `code` is the CLI's exit code (2: the user
    must repair the ledger first; 1: the machine must give it room or write access)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def backup_path(path: Path) -> Path:
    """Where the automatic backup of the ledger at `path` lives."""
    return path.with_name(path.name + ".bak")


def run_dirs(home: Path) -> list[Path]:
    """The trial run dirs under ORCH_HOME/runs (those holding a trial.json)."""
    return sorted(p.parent for p in (home / "runs").glob("*/*/trial.json"))


def _repair_hint(path: Path) -> str:
    bak = backup_path(path)
    if bak.is_file():
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(bak.stat().st_mtime))
        return f"`{RESTORE}` puts back the backup {bak.name} ({when}), or `{REBUILD}` " \
               f"rebuilds it from the run dirs"
    return f"`{REBUILD}` rebuilds it from the run dirs"


def describe(err: BaseException, path: Path, *, writing: bool = True) -> LedgerError | None:
    """The one-line LedgerError for an sqlite3 or OS error on the ledger, or None when the
    error is not a fault of the file (a bug in a query, a duplicate key)."""
    name = getattr(err, "sqlite_errorname", "") or ""
    disk_full = name.startswith(FULL) or getattr(err, "errno", None) in (errno.ENOSPC,
                                                                         errno.EDQUOT)
    if disk_full:
        return LedgerError(f"{path}: the disk is full ({err}): free some space, then run the "
                           f"command again (a sweep resumes where it stopped)")
    if name.startswith(CORRUPT):
        return LedgerError(f"{path} is corrupt ({err}); nothing was run or changed: "
                           f"{_repair_hint(path)}", code=2)
    read_only = name.startswith(READONLY) or getattr(err, "errno", None) in (errno.EROFS,
                                                                             errno.EACCES,
                                                                             errno.EPERM)
    if read_only and writing:
        return LedgerError(f"{path} is read-only ({err}): this command needs to write it; make "
                           f"it and ORCH_HOME writable, or point ORCH_HOME elsewhere (orch ls, "
                           f"status and results still read it)")
    if read_only:
        return LedgerError(f"cannot read {path} ({err}): check its permissions")
    if name.startswith(IOERR) or isinstance(err, OSError):
        return LedgerError(f"{path}: I/O error ({err}); check the disk, then run the command "
                           f"again")
    return None


def storage_fault(err: OSError) -> LedgerError | None:
    """A full, read-only or failing disk under ORCH_HOME as one line; None for other errors."""
    if err.errno not in STORAGE_ERRNOS:
        return None
    return describe(err, Path(err.filename or "ORCH_HOME"))


class GuardedConnection(sqlite3.Connection):
    """An sqlite3 connection whose file faults come out as LedgerError (one line)."""

    ledger_path: Path = Path("ledger.sqlite")
    writing: bool = True

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """Connection.execute, faults translated."""
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as e:
            raise (describe(e, self.ledger_path, writing=self.writing) or e) from None

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        """Connection.executescript, faults translated."""
        try:
            return super().executescript(script)
        except sqlite3.Error as e:
            raise (describe(e, self.ledger_path, writing=self.writing) or e) from None


def _refuse_fresh(path: Path) -> None:
    """A missing or zero-byte ledger beside run dirs would start over inside them: refuse."""
    if path.is_file() and path.stat().st_size > 0:
        return
    dirs = run_dirs(path.parent)
    if dirs:
        sweeps = sorted({d.parent.name for d in dirs})
        what = "is empty (0 bytes)" if path.is_file() else "is missing"
        raise LedgerError(f"{path} {what}, but {path.parent / 'runs'} holds {len(dirs)} run "
                          f"dir(s) of sweep(s) {', '.join(sweeps)}: `{REBUILD}` restores the "
                          f"ledger from them (move runs/ aside to start afresh instead)", code=2)


def _open(target: str | Path, path: Path, readonly: bool, **kw: Any) -> GuardedConnection:
    """sqlite3.connect with the guard set up before the first statement; faults translated."""
    try:
        db = sqlite3.connect(target, isolation_level=None, factory=GuardedConnection, **kw)
    except sqlite3.Error as e:
        raise (describe(e, path, writing=not readonly) or e) from None
    db.ledger_path, db.writing = path, not readonly
    return db


def connect(path: Path, readonly: bool) -> GuardedConnection:
    """Open the ledger. Read-only: never writes, and works on a read-only file or mount; a
    missing ledger (nothing recorded yet) reads as empty. Faults raise LedgerError."""
    _refuse_fresh(path)
    if not readonly:
        return _open(path, path, readonly, timeout=30)
    if not path.exists():
        return _open(":memory:", path, readonly)
    uri = f"file:{path}?mode=ro"
    try:
        db = _open(uri, path, readonly, uri=True, timeout=30)
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except LedgerError:
        # On read-only media SQLite cannot make the WAL's -shm file. Without a -wal file, all
        # the data is in the main file and `immutable` reads it safely; with one it would skip
        # the WAL's commits, so that case stays an error.
        if path.with_name(path.name + "-wal").exists() or _corrupt(path):
            raise
    db = _open(f"{uri}&immutable=1", path, readonly, uri=True)
    db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    return db


def copy_to_memory(db: GuardedConnection, path: Path) -> GuardedConnection:
    """A copy of the open ledger in memory (which a reader may migrate); `db` is closed."""
    copy = _open(":memory:", path, readonly=True)
    try:
        db.backup(copy)
    except sqlite3.Error as e:
        raise (describe(e, path, writing=False) or e) from None
    finally:
        db.close()
    return copy


def _corrupt(path: Path) -> bool:
    """Whether the file does not even start like an SQLite database."""
    with open(path, "rb") as fh:
        return not fh.read(16).startswith(b"SQLite format 3")


def check_intact(db: sqlite3.Connection) -> None:
    """Before a sweep writes: a quick structural check, so a malformed page is found before
    anything launches (a corrupt page may otherwise surface mid-sweep)."""
    row = db.execute("PRAGMA quick_check(1)").fetchone()
    if row is not None and row[0] != "ok":
        path = getattr(db, "ledger_path", Path("ledger.sqlite"))
        detail = " ".join(row[0].replace("*** in database main ***", "").split())
        raise LedgerError(f"{path} is corrupt ({detail}); nothing was run or changed: "
                          f"{_repair_hint(path)}", code=2)


def backup(db: sqlite3.Connection, path: Path) -> Path:
    """Copy the open ledger to ledger.sqlite.bak with SQLite's online backup; the previous
    backup is replaced only once the new one is complete."""
    bak = backup_path(path)
    tmp = bak.with_name(bak.name + ".tmp")
    try:
        dst = sqlite3.connect(tmp)
        try:
            db.backup(dst)
        finally:
            dst.close()
        os.replace(tmp, bak)
    except (sqlite3.Error, OSError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise (describe(e, bak) or LedgerError(f"{bak}: {e}")) from None
    return bak
