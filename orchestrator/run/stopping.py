"""When a trial is stopped: its timeout, a stop asked for (Ctrl-C, `orch stop`, hyperband),
and the SIGKILL after the grace period, decided here for every launcher.

A launcher only delivers the signal (Launcher.signal); what the stop was for is kept on the
Run (stop_reason, timed_out), where the verdict reads it when the trial ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from signal import SIGKILL, SIGTERM

from orchestrator.launch.protocol import Launcher, Run


@dataclass
class Stopper:
    """Stops the runs of one launcher: SIGTERM once, SIGKILL once after `grace` seconds."""

    launcher: Launcher
    timeout: float | None  # seconds of running time a trial gets (None: no limit)
    grace: float

    def stop(self, run: Run, reason: str | None = None, timed_out: bool = False) -> None:
        """Ask a trial to stop (SIGTERM, once); enforce() kills it after the grace period."""
        if run.request_stop(reason, timed_out):
            self.launcher.signal(run, SIGTERM)

    def enforce(self, run: Run, now: float) -> None:
        """Stop a trial past its timeout (counted from when it began running, not from a
        queue), and kill one that outlived its grace period."""
        if (self.timeout and run.begun is not None and now >= run.begun + self.timeout
                and run.term_sent is None):
            self.stop(run, timed_out=True)
        if run.term_sent is not None and now - run.term_sent >= self.grace and not run.kill_sent:
            run.kill_sent = True
            self.launcher.signal(run, SIGKILL)

    def stop_all(self, runs: dict[int, Run], reason: str, tick: float) -> dict[int, int]:
        """Stop every run and wait until all have ended (killed after the grace period);
        their exit codes, by the runs' keys."""
        for run in runs.values():
            self.stop(run, reason)
        codes: dict[int, int] = {}
        while len(codes) < len(runs):
            for key, run in runs.items():
                self.enforce(run, time.time())
                if key not in codes:
                    code = self.launcher.reap(run)
                    if code is not None:
                        codes[key] = code
            self.launcher.wait_any(tick)
        return codes

    @staticmethod
    def hurry(run: Run) -> None:
        """Skip the grace period (a second Ctrl-C): the next enforce() kills the trial."""
        run.term_sent = 0.0
