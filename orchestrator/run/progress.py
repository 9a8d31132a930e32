"""Live progress: a rich table redrawn in place on a terminal, plain lines everywhere else.

The table is refreshed by the run loop itself (no refresh thread), because the launcher forks
with a preexec hook, which is only safe while the process has a single thread.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.run.estimate import duration
from orchestrator.ledger import Trial, iter_states
from orchestrator.report.tables import fmt_param
from orchestrator.states import TrialState


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _elapsed(t: Trial, now: float) -> str:
    if t.started_at is None:
        return "—"
    secs = int((t.ended_at if t.state != TrialState.RUNNING and t.ended_at else now) - t.started_at)
    return f"{secs // 60}:{secs % 60:02d}"


def stage_line(console: Console, text: str) -> None:
    """One line saying what the sweep is doing now (validating, building, launching), so the
    first seconds are never silent; plain text, for terminals and pipes alike."""
    console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, markup=False,
                  soft_wrap=True)


class Progress:
    """What the user sees while a sweep runs."""

    def __init__(self, sweep: str, varied: list[str], metric: str,
                 console: Console | None = None, live: bool | None = None,
                 err: Console | None = None) -> None:
        self.sweep = sweep
        self.varied = varied
        self.metric = metric
        self.console = console or Console()
        self.err = err or Console(stderr=True)
        self.live_mode = sys.stdout.isatty() if live is None else live
        self._live: Live | None = None
        self._last_draw = 0.0
        # For the ETA: seconds per trial estimated before the sweep (None: unknown), and what
        # this run will start on how many slots (set_eta).
        self.estimate: float | None = None
        self._todo: int | None = None
        self._slots = 1
        self._since = time.time()

    def stage(self, text: str) -> None:
        """Announce a stage on stderr (the launchers and the data step call this); above the
        live table while it is drawn, so the two never overwrite each other."""
        if self._live is not None:
            self._live.console.print(Text.assemble((time.strftime("%H:%M:%S"), "dim"),
                                                   " " + text))
        else:
            stage_line(self.err, text)

    def set_eta(self, todo: int, slots: int) -> None:
        """This run will start `todo` trials on `slots` slots, from now."""
        self._todo, self._slots, self._since = todo, max(1, slots), time.time()

    def eta(self, trials: list[Trial], now: float) -> str:
        """`ETA ~2.1 h`: trials still to run x the mean time of this sweep's finished trials
        (else the estimate), over the slots; `ETA unknown` until one of them is known."""
        walls = [t.program_wall for t in trials
                 if t.state == TrialState.FINISHED and t.program_wall]
        per = sum(walls) / len(walls) if walls else self.estimate
        if per is None or self._todo is None:
            return "ETA unknown"
        running = [t for t in trials if t.state == TrialState.RUNNING]
        unended = (TrialState.PENDING, TrialState.RUNNING, TrialState.INVALID)
        ended = sum(1 for t in trials if t.state not in unended
                    and (t.started_at or 0) >= self._since)
        waiting = max(0, self._todo - ended - len(running))
        left = [per * (1 - t.step / t.max_steps) if t.step and t.max_steps
                else max(0.0, per - (now - (t.started_at or now))) for t in running]
        seconds = max(max(left, default=0.0), (sum(left) + waiting * per) / self._slots)
        return f"ETA ~{duration(seconds)}"

    def validation(self, trial: Trial, step: int | None, max_steps: int | None,
                   value: float | None, trials: list[Trial]) -> None:
        """A trial reached a validation: one line with step/total and the sweep's ETA in plain
        mode (the live table shows both already)."""
        if self.live_mode:
            return
        where = "—" if step is None else f"{step}/{max_steps or '?'}"
        self.note(f"trial {trial.number}: step {where} {self.metric}={_fmt(value)}; "
                  f"sweep {self.eta(trials, time.time())}")

    def start(self) -> None:
        """Begin drawing (the table appears on the first refresh)."""
        if self.live_mode:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()

    def stop(self) -> None:
        """Stop drawing; the last table stays on screen."""
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def note(self, text: str) -> None:
        """One event line (a trial started, ended, was stopped)."""
        stamp = time.strftime("%H:%M:%S")
        if self._live is not None:
            self._live.console.print(f"[dim]{stamp}[/dim] {text}", highlight=False)
        else:
            print(f"{stamp} [{self.sweep}] {text}", flush=True)

    def refresh(self, trials: list[Trial], live: Mapping[int, Any]) -> None:
        """Redraw the table (at most 4 times a second); plain mode prints only notes."""
        now = time.time()
        if self._live is None or now - self._last_draw < 0.25:
            return
        self._last_draw = now
        self._live.update(self.table(trials, now), refresh=True)

    def table(self, trials: list[Trial], now: float) -> Table:
        """Trial, varied params, state, device (as the program reports it), step/max, last and
        best metric, elapsed."""
        summary = ", ".join(f"{n} {s}" for s, n in iter_states(trials))
        table = Table(title=f"sweep {self.sweep}: {summary}; {self.eta(trials, now)}",
                      title_justify="left")
        table.add_column("trial", justify="right")
        for name in self.varied:
            table.add_column(name)
        for col in ("state", "device", "step", f"last {self.metric}", f"best {self.metric}",
                    "elapsed"):
            table.add_column(col, justify="right" if col != "state" else "left",
                             no_wrap=True, min_width=8 if col == "state" else None)
        shown = [t for t in trials if t.state != TrialState.INVALID]
        # Running first, then the most recent, so the table stays short on long sweeps.
        shown.sort(key=lambda t: (t.state != TrialState.RUNNING, -(t.number)))
        for t in shown[:30]:
            step = "—" if t.step is None else f"{t.step}/{t.max_steps or '?'}"
            params = [fmt_param(t.params.get(n), [u.params.get(n) for u in trials])
                      for n in self.varied]
            table.add_row(str(t.number), *params,
                          t.state, t.device or "—", step, _fmt(t.last_metric),
                          _fmt(t.best_metric),
                          _elapsed(t, now))
        return table
