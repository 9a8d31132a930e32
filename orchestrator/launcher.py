"""Launchers: the protocol the scheduler drives, and the local one (a subprocess per trial).

The local launcher runs one trial = one subprocess in its own process group and run dir.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from orchestrator.ledger import Trial

PR_SET_PDEATHSIG = 1
MARKER = "ORCH_TRIAL"


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


class LauncherError(Exception):
    """The launcher cannot run trials here (no engine, no GPU runtime, a failed build): one line
    saying what was tried and how to fix it."""


@dataclass
class Launch:
    """Everything about one trial attempt a launcher may need.

    `argv` and `env` are the host command and environment (what the local launcher runs); a
    container launcher rebuilds the command from `program`, `base` and `point` with its own paths.
    """

    trial_id: int
    number: int
    attempt: int
    argv: list[str]
    run_dir: Path
    env: dict[str, str]
    timeout: float | None
    marker: str
    base: Path
    point: dict[str, Any]
    device: str


@dataclass(kw_only=True)
class Run:
    """A live trial attempt, whatever runs it."""

    trial_id: int
    run_dir: Path
    started: float
    deadline: float | None
    log: Path
    term_sent: float | None = None
    stop_reason: str | None = None
    timed_out: bool = False
    oom: str | None = None  # why the launcher knows it ran out of memory (beyond the exit code)
    # (state, reason) only the launcher saw, e.g. Slurm's time limit or a node failure; it wins
    # over the exit code unless orch itself stopped the trial or it finished.
    verdict: tuple[str, str] | None = None
    job: str | None = None  # an id outside this process (a Slurm job id), kept in the ledger
    extra: dict[str, object] = field(default_factory=dict)

    def request_stop(self, reason: str | None, timed_out: bool) -> bool:
        """Record why the trial is being stopped; True the first time (send the signal then).

        The first reason wins, and a timeout is never relabelled by a later reason.
        """
        if reason and self.stop_reason is None and not self.timed_out:
            self.stop_reason = reason
        self.timed_out = self.timed_out or timed_out
        if self.term_sent is not None:
            return False
        self.term_sent = time.time()
        return True

    @property
    def pid(self) -> int | None:
        """A host pid for the ledger (None when there is none)."""
        return None

    @property
    def pgid(self) -> int | None:
        """The process group for the ledger (None when there is none)."""
        return None


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


class Launcher(Protocol):
    """What the scheduler needs from a launcher; one instance serves one sweep run."""

    def prepare(self, devices: list[str]) -> None:
        """Check the machine and make what trials need (an image); raise LauncherError."""

    def reap_orphans(self, marker: str) -> int:
        """End what a dead orchestrator of this sweep left running; how many were ended."""

    def start(self, launch: Launch) -> Run:
        """Start one trial attempt; its output goes to RUN_DIR/trial.log."""

    def wait_any(self, timeout: float) -> None:
        """Sleep until some trial may have ended, or `timeout` seconds pass."""

    def terminate(self, run: Run, reason: str | None = None, timed_out: bool = False) -> None:
        """Ask a trial to stop (SIGTERM); enforce() kills it after the grace period."""

    def enforce(self, run: Run, now: float) -> None:
        """Apply the timeout and the kill after grace."""

    def reap(self, run: Run) -> int | None:
        """The exit code once the trial ended (its resources released), else None."""

    def close(self) -> None:
        """Release everything; no trial of this launcher outlives it."""


@runtime_checkable
class Adopter(Protocol):
    """A launcher whose trials outlive the orchestrator (batch jobs on a cluster).

    A resumed sweep adopts their attempts instead of re-running them, and a Ctrl-C may leave
    them running; the local and Docker launchers end theirs (reap_orphans) instead.
    """

    def adopt(self, trials: list[Trial]) -> dict[int, Run]:
        """Take over the attempts of trials a dead orchestrator left `running` that the backend
        still knows (queued, running, or ended unseen), by trial id; the rest are re-run.
        Called before reap_orphans, which then spares them."""

    def detach(self) -> None:
        """Leave the live attempts running past this orchestrator: close() spares them."""


@runtime_checkable
class DataPreparer(Protocol):
    """A launcher whose trials read the data somewhere else than this machine's Python would
    (Docker: the image's own program and tokenizers); the others' data is prepared here."""

    def prepare_data(self, spec_path: Path, base: Path,
                     settings: list[dict[str, Any]]) -> None:
        """Fill the data cache for each setting (dotted data keys) before the first trial;
        raise SpecError when the program refuses the data, LauncherError when it fails."""


class LocalLauncher:
    """Starts trial processes and waits for them without busy polling (pidfd where available)."""

    def __init__(self, kill_grace: float) -> None:
        self.kill_grace = kill_grace
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
            proc = subprocess.Popen(launch.argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT,
                                    env={**launch.env, MARKER: launch.marker},
                                    start_new_session=True, preexec_fn=self._arm,
                                    close_fds=True)
        now = time.time()
        self._watch(proc.pid)
        return Running(trial_id=launch.trial_id, proc=proc, run_dir=run_dir, started=now,
                       deadline=now + launch.timeout if launch.timeout else None, log=log)

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

    def terminate(self, run: Running, reason: str | None = None, timed_out: bool = False) -> None:
        """SIGTERM the trial's process group (once); SIGKILL follows after the grace period."""
        if run.request_stop(reason, timed_out):
            _signal_group(run.pgid, signal.SIGTERM)

    def enforce(self, run: Running, now: float) -> None:
        """Apply the timeout and the SIGKILL after grace."""
        if run.deadline is not None and now >= run.deadline and run.term_sent is None:
            self.terminate(run, timed_out=True)
        if run.term_sent is not None and now - run.term_sent >= self.kill_grace:
            _signal_group(run.pgid, signal.SIGKILL)

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
