"""Ledger faults, injected for real: a full disk (a small tmpfs), a read-only mount, truncated,
garbage, malformed and zero-byte ledger files. Each fault must end in one line (no traceback),
the right exit code, nothing launched or duplicated, the ledger left as it was, and a resume
(after `orch ledger rebuild` or `restore` where the file was lost) that completes the sweep.

Mounting needs root (CI runs as root): without it these tests skip, and under CI=true fail.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from orch_helpers import (message_lines, orch_env, pid_alive, run_orch, start_orch, starts,
                          unavailable, wait_for, write_spec)

from orchestrator.ledger import Ledger

SEEDS = [1, 2, 3, 4]
SLOW = {"default": {"step_time": 0.3, "curve": [3.0, 2.8, 2.6, 2.4, 2.2, 2.0, 1.9, 1.8, 1.7,
                                                1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0]}}


def _mount(args: list[str], target: Path) -> None:
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"cannot mount here (`mount {' '.join(args)}`: {proc.stderr.strip()})",
                    "CI runs these tests as root")


@contextlib.contextmanager
def mounted(args: list[str], target: Path) -> Iterator[Path]:
    """`mount ARGS TARGET` for the duration; skip (fail in CI) where mounting is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    _mount(args, target)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextlib.contextmanager
def read_only_view(home: Path, view: Path) -> Iterator[Path]:
    """`home` seen through a read-only bind mount at `view` (root cannot write it either)."""
    with mounted(["--bind", str(home)], view):
        _mount(["-o", "remount,bind,ro"], view)
        yield view


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The command's error: exactly one line on stderr (beside timestamped stage lines such as
    "validating SPEC…"), no traceback, holding `words`."""
    lines = message_lines(proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _snapshot(home: Path) -> list[tuple]:
    """What the ledger says about each trial (the parts a rebuild must restore)."""
    ledger = Ledger(home, readonly=True)
    rows = [(t.number, t.config_hash, t.params, t.state, t.attempts, t.exit_code, t.run_dir,
             t.final, t.best, t.result, t.step, t.best_metric,
             len(ledger.history(t)) if t.attempts else 0)
            for t in ledger.trials("t")]
    ledger.close()
    return rows


def _finished_sweep(home: Path, tmp_path: Path, **spec: object) -> Path:
    spec_path = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": SEEDS}},
                           **spec)
    proc = run_orch(["sweep", str(spec_path)], orch_env(home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return spec_path


def _resume_runs_nothing(home: Path, spec_path: Path) -> None:
    before = len(starts(home))
    proc = run_orch(["sweep", str(spec_path)], orch_env(home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(starts(home)) == before
    assert [t[3] for t in _snapshot(home)] == ["finished"] * len(SEEDS)


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"this is not a ledger\n" + os.urandom(5000))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    else:  # a malformed page: the header is fine, a b-tree page in the middle is noise
        page = int.from_bytes(data[16:18], "big")
        assert len(data) >= 4 * page
        path.write_bytes(data[: 2 * page] + os.urandom(page) + data[3 * page:])


@pytest.mark.parametrize("how", ["garbage", "truncated", "malformed-page"])
def test_corrupt_ledger_says_one_line_runs_nothing_and_rebuilds(orch_home: Path, tmp_path: Path,
                                                                how: str) -> None:
    spec_path = _finished_sweep(orch_home, tmp_path)
    good = _snapshot(orch_home)
    ledger = orch_home / "ledger.sqlite"
    _corrupt(ledger, how)
    bad = _digest(ledger)
    launched = len(starts(orch_home))
    for args in (["ls"], ["status", "t"], ["results", "t"], ["sweep", str(spec_path)]):
        proc = run_orch(args, orch_env(orch_home))
        assert proc.returncode == 2, (args, proc.stdout + proc.stderr)
        _one_line_error(proc, str(ledger), "corrupt", "orch ledger rebuild",
                        "orch ledger restore")
    assert _digest(ledger) == bad and len(starts(orch_home)) == launched
    proc = run_orch(["ledger", "rebuild"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = [p for p in orch_home.glob("ledger.sqlite.broken-*") if p.name[-4:] not in ("-wal",
                                                                                      "-shm")]
    assert len(kept) == 1 and _digest(kept[0]) == bad  # the bad file is kept, untouched
    assert _snapshot(orch_home) == good
    _resume_runs_nothing(orch_home, spec_path)


@pytest.mark.parametrize("lost", ["zero-byte", "missing"])
def test_lost_ledger_beside_run_dirs_is_never_silently_started_over(orch_home: Path,
                                                                    tmp_path: Path,
                                                                    lost: str) -> None:
    spec_path = _finished_sweep(orch_home, tmp_path)
    good = _snapshot(orch_home)
    ledger = orch_home / "ledger.sqlite"
    for part in ("", "-wal", "-shm"):
        Path(f"{ledger}{part}").unlink(missing_ok=True)
    if lost == "zero-byte":
        ledger.write_bytes(b"")
    launched = len(starts(orch_home))
    for args in (["sweep", str(spec_path)], ["ls"]):
        proc = run_orch(args, orch_env(orch_home))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        _one_line_error(proc, str(ledger), "4 run dir(s)", "orch ledger rebuild")
    assert len(starts(orch_home)) == launched
    if lost == "zero-byte":
        assert ledger.stat().st_size == 0
    else:
        assert not ledger.exists()  # nothing created in its place
    proc = run_orch(["ledger", "rebuild"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _snapshot(orch_home) == good
    _resume_runs_nothing(orch_home, spec_path)


def test_rebuild_restores_attempts_history_and_what_is_left_to_run(orch_home: Path,
                                                                   tmp_path: Path) -> None:
    script = {"key": "train.seed", "cases": {"2": {"mode": "crash"}, "3": {"mode": "diverge"}}}
    spec_path = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": SEEDS}},
                           resources={"retries": 1})
    env = orch_env(orch_home, script)
    first = run_orch(["sweep", str(spec_path), "--max-trials", "4"], env)  # 3 trials, 4 runs
    assert first.returncode == 0, first.stdout + first.stderr
    good = _snapshot(orch_home)
    assert [g[4] for g in good] == [1, 2, 1]  # the crash was retried once: two run dirs
    proc = run_orch(["ledger", "rebuild"], env)  # the ledger is fine: refused without --force
    assert proc.returncode == 2
    _one_line_error(proc, "intact", "--force")
    proc = run_orch(["ledger", "rebuild", "--force"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(orch_home.glob("ledger.sqlite.replaced-*"))
    assert _snapshot(orch_home) == good
    again = run_orch(["sweep", str(spec_path)], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(s["train.seed"] for s in starts(orch_home)) == ["1", "2", "2", "3", "4"]


def test_backup_after_each_sweep_and_restore(orch_home: Path, tmp_path: Path) -> None:
    spec_path = _finished_sweep(orch_home, tmp_path)
    good = _snapshot(orch_home)
    bak = orch_home / "ledger.sqlite.bak"
    with contextlib.closing(sqlite3.connect(f"file:{bak}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM trials WHERE state='finished'").fetchone()[0] == 4
    _corrupt(orch_home / "ledger.sqlite", "garbage")
    proc = run_orch(["ledger", "restore"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _snapshot(orch_home) == good
    _resume_runs_nothing(orch_home, spec_path)


@contextlib.contextmanager
def immutable(home: Path) -> Iterator[Path]:
    """The ledger file made immutable (`chattr +i`: root cannot write it either)."""
    ledger = home / "ledger.sqlite"
    proc = subprocess.run(["chattr", "+i", str(ledger)], capture_output=True, text=True)
    if proc.returncode != 0:
        unavailable(f"cannot make the ledger immutable here (chattr: {proc.stderr.strip()})",
                    "CI runs these tests as root")
    try:
        yield home
    finally:
        subprocess.run(["chattr", "-i", str(ledger)], check=False)


@pytest.mark.parametrize("how", ["read-only mount", "immutable file"])
def test_read_only_ledger_reads_work_and_writes_say_one_line(orch_home: Path, tmp_path: Path,
                                                             how: str) -> None:
    spec_path = _finished_sweep(orch_home, tmp_path)
    good = _snapshot(orch_home)
    digest = _digest(orch_home / "ledger.sqlite")
    view = read_only_view(orch_home, tmp_path / "ro") if how == "read-only mount" \
        else immutable(orch_home)
    with view as ro:
        with pytest.raises(OSError) as denied:  # really read-only, even for root
            open(ro / "ledger.sqlite", "ab").close()
        assert denied.value.errno in (errno.EROFS, errno.EPERM)
        env = orch_env(ro, FAKE_LOG=str(tmp_path / "starts.log"))
        for args, shows in ((["ls"], "4 finished"), (["status", "t"], "finished"),
                            (["results", "t"], "1.5000")):
            proc = run_orch(args, env)
            assert proc.returncode == 0 and shows in proc.stdout, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr
        for args in (["sweep", str(spec_path)], ["stop", "t"]):
            proc = run_orch(args, env)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            _one_line_error(proc, "read-only", "ORCH_HOME")
        assert not (tmp_path / "starts.log").exists()  # nothing launched
    assert _digest(orch_home / "ledger.sqlite") == digest and _snapshot(orch_home) == good


def test_disk_full_mid_sweep_stops_trials_and_resumes(orch_home: Path, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "s.yaml", parameters={"train.seed": {"values": SEEDS}},
                           resources={"cpu_slots": 2})
    with mounted(["-t", "tmpfs", "-o", "size=4m", "tmpfs"], orch_home):
        # The ledger fills its disk; the run dirs live elsewhere, so the trials themselves run
        # on until orch stops them (had they shared the disk, they would fail on their own).
        (tmp_path / "runs").mkdir()
        (orch_home / "runs").symlink_to(tmp_path / "runs")
        env = orch_env(orch_home, SLOW, FAKE_LOG=str(tmp_path / "starts.log"))
        proc = start_orch(["sweep", str(spec_path)], env)
        try:
            running = wait_for(lambda: [t for t in Ledger(orch_home, readonly=True).trials("t")
                                        if t.state == "running" and t.step], 60, "two trials")
            pids = [t.pid for t in Ledger(orch_home, readonly=True).trials("t")
                    if t.state == "running"]
            filler = orch_home / "filler"
            with open(filler, "wb") as fh, contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert running and pids
        assert proc.returncode == 1, output
        assert "Traceback" not in output
        errors = [x for x in output.splitlines() if x.startswith("error: ")]
        assert len(errors) == 1 and "disk is full" in errors[0], output
        assert not any(pid_alive(p) for p in pids if p)  # orch stopped its trials
        (orch_home / "filler").unlink()
        with contextlib.closing(sqlite3.connect(orch_home / "ledger.sqlite")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        after = Ledger(orch_home).sweeps()[0]
        assert not after["owner_alive"]  # resumable: no live owner holds it
        done = {t.params["train.seed"] for t in Ledger(orch_home).trials("t")
                if t.state == "finished"}
        again = run_orch(["sweep", str(spec_path)], {**env, "FAKE_SCRIPT": "{}"})
        assert again.returncode == 0, again.stdout + again.stderr
        assert {t.state for t in Ledger(orch_home).trials("t")} == {"finished"}
        seeds = [s["train.seed"] for s in starts(tmp_path)]
        assert sorted(set(seeds)) == ["1", "2", "3", "4"]
        assert all(seeds.count(str(s)) == 1 for s in done)  # a finished trial never re-ran


def test_orch_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """`orch ls` showed an empty table and `orch sweep` an I/O error about the disk."""
    home = tmp_path / "a-file"
    home.write_text("")
    spec = write_spec(tmp_path / "s.yaml")
    for command in (["ls"], ["sweep", str(spec)], ["sweep", str(spec), "--dry-run"]):
        proc = run_orch(command, orch_env(home))
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert f"ORCH_HOME {home} is a file, not a folder" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_rebuild_with_an_unreadable_result_keeps_the_last_validation(orch_home: Path,
                                                                     tmp_path: Path) -> None:
    """A truncated result.json left its trial `finished` with no metric at all, silently (and
    so out of the ranking and `orch best`): now the metrics of its last validation event, and
    a warning that names the file."""
    _finished_sweep(orch_home, tmp_path)
    trial = Ledger(orch_home).trials("t")[0]
    before = trial.final["val_loss"]
    result = Path(trial.run_dir) / "result.json"
    result.write_text(result.read_text()[:40])  # truncated mid-object
    proc = run_orch(["ledger", "rebuild", "--force"], orch_env(orch_home))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"warning: {result} is unreadable" in " ".join(proc.stderr.split())
    rebuilt = Ledger(orch_home).trials("t")[0]
    assert rebuilt.state == "finished" and rebuilt.final["val_loss"] == before
    assert rebuilt.device == trial.device is not None  # from its device_info event
