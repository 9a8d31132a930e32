"""The launcher protocol: what the run loop asks of any launcher (local, Docker, Slurm), and the
values that pass between them: one attempt's Launch, the live Run, and LauncherError.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from signal import Signals
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from orchestrator.launch.command import Command
    from orchestrator.ledger import Trial
    from orchestrator.states import TrialState

MARKER = "ORCH_TRIAL"  # in every trial's environment, so a dead orchestrator's trials can be found


class LauncherError(Exception):
    """The launcher cannot run trials here (no engine, no GPU runtime, a failed build): one line
    saying what was tried and how to fix it."""


@dataclass
class Launch:
    """Everything about one trial attempt a launcher may need.

    `command` is what runs (each launcher renders it for its world); `env` is the host
    environment (what the local launcher runs it in).
    """

    trial_id: int
    number: int
    attempt: int
    command: Command
    run_dir: Path
    env: dict[str, str]
    marker: str
    device: str


@dataclass(kw_only=True)
class Run:
    """A live trial attempt, whatever runs it.

    The launcher fills in what it sees (when it began running, an OOM, a verdict, a job id);
    the run loop keeps how it is being stopped (run/stopping.py).
    """

    trial_id: int
    run_dir: Path
    started: float
    log: Path
    begun: float | None = None  # when it began running (None while queued): timeouts count from it
    term_sent: float | None = None
    kill_sent: bool = False
    stop_reason: str | None = None
    timed_out: bool = False
    oom: str | None = None  # why the launcher knows it ran out of memory (beyond the exit code)
    # (state, reason) only the launcher saw, e.g. Slurm's time limit or a node failure; it wins
    # over the exit code unless orch itself stopped the trial or it finished.
    verdict: tuple[TrialState, str] | None = None
    job: str | None = None  # an id outside this process (a Slurm job id), kept in the ledger

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


class Launcher(Protocol):
    """What the run loop needs from a launcher; one instance serves one sweep run."""

    def prepare(self, devices: list[str]) -> None:
        """Check the machine and make what trials need (an image); raise LauncherError."""

    def reap_orphans(self, marker: str) -> int:
        """End what a dead orchestrator of this sweep left running; how many were ended."""

    def start(self, launch: Launch) -> Run:
        """Start one trial attempt; its output goes to RUN_DIR/trial.log."""

    def wait_any(self, timeout: float) -> None:
        """Sleep until some trial may have ended, or `timeout` seconds pass."""

    def signal(self, run: Run, sig: Signals) -> None:
        """Deliver SIGTERM (ask the trial to stop) or SIGKILL (end it now); the run loop
        decides when (run/stopping.py). A trial that already ended is left alone."""

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
