"""Helpers for the orchestrator tests: specs on the fake program, running `orch`, waiting."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fake_trainer.py"
BASE_TINY = REPO / "sweeps" / "base_tiny.yaml"
STAGE = re.compile(r"\d\d:\d\d:\d\d \S")  # a progress line: "12:00:00 validating s.yaml…"


def unavailable(reason: str, in_ci: str = "") -> None:
    """A real part this test needs is missing: skip here, but fail in CI (CI set), where every
    real part is started and must run; `in_ci` says what CI does about it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; {in_ci}" if in_ci else reason)
    pytest.skip(reason)


def message_lines(stderr: str) -> list[str]:
    """What a command said on stderr about its outcome: its lines less blank ones and the
    timestamped progress lines (validating, preparing, launching) it prints from the start."""
    return [x for x in stderr.splitlines() if x.strip() and not STAGE.match(x)]


def write_spec(path: Path, **fields: Any) -> Path:
    """A spec on the fake trainer (CPU, 1 slot) with `fields` merged over the defaults."""
    spec: dict[str, Any] = {
        "name": "t", "base": str(BASE_TINY), "program": f"{sys.executable} {FAKE}",
        "method": "grid", "parameters": {"train.seed": {"values": [1, 2, 3]}},
        "resources": {"gpus": None, "cpu_slots": 1, "kill_grace": "2s"},
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict) and key != "parameters":
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def orch_env(home: Path, script: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
    """Environment for an `orch` process: its own ORCH_HOME, the fake's script and start log."""
    env = {**os.environ, "ORCH_HOME": str(home), "FAKE_LOG": str(home / "starts.log"),
           "FAKE_SCRIPT": json.dumps(script or {}), "COLUMNS": "200", **extra}
    return env


def run_orch(args: list[str], env: dict[str, str], timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m orchestrator ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start_orch(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start `python -m orchestrator ARGS` in the background."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(cond: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy; fail after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def starts(home: Path) -> list[dict[str, Any]]:
    """Every trial start the fake logged (one dict of overrides per start)."""
    log = home / "starts.log"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def pid_alive(pid: int) -> bool:
    """Whether a pid is a live (non-zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def old_ledger(source: Path, target: Path) -> Path:
    """A copy of the ledger at `source` as orch made it before schema versions: without the
    columns added since (trials.job, sweeps.wandb_sweep, trials.result_json,
    trials.reused_from), user_version 0."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("DROP INDEX IF EXISTS sweeps_wandb")
        dst.execute("DROP INDEX IF EXISTS trials_hash")
        for table, column in (("trials", "job"), ("sweeps", "wandb_sweep"),
                              ("trials", "result_json"), ("trials", "reused_from")):
            dst.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        dst.execute("PRAGMA user_version=0")
        dst.commit()
    finally:
        src.close()
        dst.close()
    return target


def schema_version(path: Path) -> int:
    """The ledger file's schema version (PRAGMA user_version), read without migrating it."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()
