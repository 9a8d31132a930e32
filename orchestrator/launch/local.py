"""The local launcher: one trial = one subprocess in its own process group and run dir.

Two guards keep trials from outliving the orchestrator: each trial leads its own session (so a
Ctrl-C in the terminal reaches only the orchestrator, which then stops the trials in order), and
each trial gets a parent-death signal (SIGKILL when the orchestrator dies, even by kill -9).
Every trial also carries an `ORCH_TRIAL` marker in its environment, so a resumed sweep can find
and end any process a dead orchestrator left behind.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from signal import Signals
from typing import Callable

from orchestrator.launch.protocol import MARKER, Launch, Run

PR_SET_PDEATHSIG = 1


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A preexec_fn arming SIGKILL-on-parent-death, or None where prctl is unavailable.

    libc is loaded here, in the parent, so the child only makes the call between fork and exec.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would send the signal.
        if os.getppid() != parent:
            os._exit(137)

    return arm


@dataclass(kw_only=True)
class Running(Run):
    """A live trial process."""

    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The trial process's pid."""
        return self.proc.pid

    @property
    def pgid(self) -> int:
        """The process group the trial leads (its pid, since it started a session)."""
        return self.proc.pid


class LocalLauncher:
    """Starts trial processes and waits for them without busy polling (pidfd where available)."""

    def __init__(self) -> None:
        self._arm = _pdeathsig_hook()
        self._selector = selectors.DefaultSelector()
        self._pidfds: dict[int, int] = {}

    def prepare(self, devices: list[str]) -> None:
        """Nothing to check or build: the trial program runs on this Python."""

    def reap_orphans(self, marker: str) -> int:
        """End processes a dead orchestrator left behind, found by their ORCH_TRIAL marker."""
        return len(kill_marked(marker))

    def start(self, launch: Launch) -> Running:
        """Start one trial; its stdout and stderr go to RUN_DIR/trial.log."""
        run_dir = launch.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "trial.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(launch.command.host(), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT,
                                    env={**launch.env, MARKER: launch.marker},
                                    start_new_session=True, preexec_fn=self._arm,
                                    close_fds=True)
        now = time.time()
        self._watch(proc.pid)
        return Running(trial_id=launch.trial_id, proc=proc, run_dir=run_dir, started=now,
                       begun=now, log=log)

    def _watch(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return
        self._pidfds[pid] = fd
        self._selector.register(fd, selectors.EVENT_READ, pid)

    def forget(self, pid: int) -> None:
        """Stop watching a reaped process."""
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self._selector.unregister(fd)
            os.close(fd)

    def wait_any(self, timeout: float) -> None:
        """Sleep until some watched process exits or `timeout` seconds pass."""
        if self._pidfds:
            self._selector.select(timeout)
        else:
            time.sleep(timeout)

    def signal(self, run: Run, sig: Signals) -> None:
        """Send `sig` to the trial's whole process group."""
        assert isinstance(run, Running)
        _signal_group(run.pgid, sig)

    def reap(self, run: Running) -> int | None:
        """The exit code if the process ended (its group's stragglers are killed), else None."""
        code = run.proc.poll()
        if code is None:
            return None
        # The leader is gone; anything it started in its group must not linger.
        _signal_group(run.pgid, signal.SIGKILL)
        self.forget(run.proc.pid)
        return code

    def close(self) -> None:
        """Release the selector."""
        for pid in list(self._pidfds):
            self.forget(pid)
        self._selector.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def find_marked(prefix: str) -> list[int]:
    """Pids of live processes whose ORCH_TRIAL marker starts with `prefix` (this user's only)."""
    found = []
    needle = f"{MARKER}={prefix}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(needle) for var in env.split(b"\0")):
            found.append(int(entry.name))
    return found


def kill_marked(prefix: str, grace: float = 5.0) -> list[int]:
    """End leftover trial processes of a dead orchestrator: SIGTERM, then SIGKILL after grace."""
    pids = find_marked(prefix)
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    end = time.time() + grace
    while time.time() < end and any(_exists(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _exists(pid):
            _kill(pid, signal.SIGKILL)
    return pids


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, just not yet reaped by its parent
