"""The run loop: fill slots with trials, watch them, stop them, and record everything.

One thread, one loop: reap ended trials, tail their events, ask hyperband what to stop, enforce
timeouts (stopping.py), launch into free slots (new trials from suggest.py), draw progress, then
sleep until a trial exits (pidfd) or a short tick passes. Signals only set a flag the loop reads,
so every ledger write happens in the loop, in order, and an interrupted sweep leaves a
consistent ledger. One attempt's run dir, verdict and record are attempt.py's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.contract import EventTail, finite
from orchestrator.launch.command import TrialCommand, written
from orchestrator.launch.dataprep import data_settings, prepare_on_host
from orchestrator.launch.choice import make_launcher
from orchestrator.launch.protocol import Adopter, DataPreparer, Launch, Launcher
from orchestrator.ledger import Ledger, Trial
from orchestrator.ledger_file import LedgerError, storage_fault
from orchestrator.ledger_rebuild import write_sweep
from orchestrator.optuna_search import make_engine
from orchestrator.run.attempt import (Live, attempt_dir, host_env, record_end, set_aside,
                                      write_trial_json)
from orchestrator.run.estimate import points_to_run, reused_count
from orchestrator.run.progress import Progress
from orchestrator.run.reuse import reuse, reuse_lookup
from orchestrator.run.slots import Slot, make_slots, ran_on, sweep_slots
from orchestrator.run.stopping import Stopper
from orchestrator.run.suggest import suggest
from orchestrator.search import Engine
from orchestrator.spec.plan import Plan
from orchestrator.states import INTERRUPTED, SweepState, TrialState

TICK = 0.25  # seconds between looks at events.jsonl while trials run
EARLY_STOP = "early-terminated by hyperband"


class SweepBusy(Exception):
    """Another live orchestrator owns this sweep."""


@dataclass
class RunLoop:
    """Runs one sweep of a Plan against the ledger."""

    plan: Plan
    ledger: Ledger
    progress: Progress
    home: Path
    max_trials: int | None = None
    slots: list[Slot] | None = None
    # Asked on Ctrl-C when the launcher's jobs can outlive orch (Slurm), with how many are in
    # flight: True leaves them running (a resume adopts them). None: cancel them.
    on_interrupt: Callable[[int], bool] | None = None
    _signal: int | None = None
    _live: dict[int, Live] = field(default_factory=dict)
    _histories: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The sweep's name."""
        return self.plan.spec.name

    def _marker(self, trial_id: int | None = None) -> str:
        return f"{self.home}:{self.name}:" + ("" if trial_id is None else str(trial_id))

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # A second Ctrl-C means "now": skip the grace period.
        if self._signal is not None:
            for live in self._live.values():
                Stopper.hurry(live.run)
        self._signal = signum

    def run(self) -> int:
        """Run the sweep to its end or an interruption; the exit code for the CLI."""
        spec = self.plan.spec
        owner = self.ledger.live_owner(self.name)  # busy: say so before any work (image, data)
        if owner:
            raise SweepBusy(f"sweep {self.name} is running under pid {owner['owner_pid']}; "
                            f"`orch stop {self.name}` stops it")
        # Before the ledger is touched: an engine that is down or a failed build launches nothing.
        launcher = make_launcher(self.plan, self.home, self.progress.note)
        stopper = Stopper(launcher, spec.resources.timeout, spec.resources.kill_grace)
        if self.slots is None:
            self.slots = sweep_slots(spec)
        if spec.launcher.type != "local":
            self.progress.stage(f"preparing the {spec.launcher.type} launcher"
                                + (" (engine, image)…" if spec.launcher.type == "docker" else "…"))
        try:
            launcher.prepare([s.device for s in self.slots])
            self._prepare_data(launcher)
            owner = self._claim()
        except BaseException:
            launcher.close()
            raise
        if owner:
            launcher.close()
            raise SweepBusy(f"sweep {self.name} is running under pid {owner['owner_pid']}; "
                            f"`orch stop {self.name}` stops it")
        adopted = self._adopt(launcher)
        leftovers = launcher.reap_orphans(self._marker())
        for t in self.ledger.recover(self.name, keep=adopted):
            why = ("left running by a dead orchestrator" if t.state == TrialState.RUNNING
                   else "interrupted")
            self.progress.note(f"trial {t.number}: re-run ({why})")
        if leftovers:
            self.progress.note(f"ended {leftovers} leftover trial(s) of a dead orchestrator")
        for t in self.ledger.trials(self.name):
            if t.attempts or t.reused_from:
                self._histories[t.id] = [p.metrics for p in self.ledger.history(t)]
        trials = self.ledger.trials(self.name)
        reuse_of = reuse_lookup(self.plan, self.ledger)
        todo = len(points_to_run(self.plan, trials, self.max_trials, reuse_of))
        reused = reused_count(self.plan, trials, reuse_of)
        self.progress.stage(f"launching {todo} trial(s) on {len(self.slots)} slot(s)"
                            + (f"; {reused} reused from other sweeps" if reused else ""))
        self.progress.set_eta(todo, len(self.slots))
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.progress.start()
        try:
            state = self._loop(stopper)
        except (LedgerError, OSError) as e:
            fault = e if isinstance(e, LedgerError) else storage_fault(e)
            if fault is None:
                raise
            self._stop_after_fault(stopper)
            raise fault from None
        finally:
            launcher.close()
            self.progress.stop()
            for s, handler in old.items():
                signal.signal(s, handler)
        self.ledger.release(self.name, state)
        try:
            self.ledger.backup()
        except LedgerError as e:  # the sweep itself is recorded; only the spare copy is missing
            self.progress.note(f"warning: no backup of the ledger this time: {e}")
        if state in (SweepState.STOPPED, SweepState.DETACHED):
            return 143 if self._signal == signal.SIGTERM else 130
        trials = self.ledger.trials(self.name)
        ok = any(t.state == TrialState.FINISHED for t in trials) or state == SweepState.PAUSED
        return 0 if ok else 1

    def _prepare_data(self, launcher: Launcher) -> None:
        """Each distinct data setting once, before anything launches (dataprep.py)."""
        settings = data_settings(self.plan)
        if not settings or self.plan.spec.launcher.type == "replay":  # a replay reads no data
            return
        self.progress.note(f"checking the data and filling its cache ({len(settings)} "
                           "setting(s)) before the first trial")
        if isinstance(launcher, DataPreparer):
            launcher.prepare_data(self.plan.doc.path, self.plan.base, settings)
        else:
            cache = Path(os.environ.get("ORCH_CACHE_DIR") or self.home / "cache")
            prepare_on_host(self.plan.doc.path, self.plan.program, self.plan.base, settings,
                            cache)

    def _claim(self) -> dict[str, Any] | None:
        """Record the sweep (and its spec beside its run dirs, for `orch ledger rebuild`) and
        become its owner; the live other owner's row if there is one."""
        spec = self.plan.spec
        self.ledger.upsert_sweep(self.name, str(self.plan.doc.path), spec.model_dump(mode="json"),
                                 self.plan.varied, spec.metric.name, spec.metric.goal)
        owner = self.ledger.claim(self.name)
        if owner is None:
            write_sweep(self.home, self.name, spec_path=str(self.plan.doc.path),
                        spec=spec.model_dump(mode="json"), varied=self.plan.varied,
                        metric=spec.metric.name, goal=spec.metric.goal)
        return owner

    def _stop_after_fault(self, stopper: Stopper) -> None:
        """The ledger or the disk failed mid-sweep: stop every trial (SIGTERM, SIGKILL after the
        grace period) without relying on the ledger, then record what still can be recorded.
        Whatever stays `running` belongs to a dead owner, so `orch sweep` re-runs it."""
        self.progress.note(f"stopping {len(self._live)} trial(s): the ledger or its disk failed")
        codes = stopper.stop_all({i: live.run for i, live in self._live.items()}, INTERRUPTED,
                                 TICK)
        with contextlib.suppress(LedgerError):
            for trial_id, code in codes.items():
                self.ledger.finish(trial_id, state=TrialState.STOPPED, reason=INTERRUPTED,
                                   exit_code=code, ended_at=time.time(), final=None, best=None,
                                   program_wall=time.time() - self._live[trial_id].run.started)
            self.ledger.release(self.name, SweepState.STOPPED)

    def _loop(self, stopper: Stopper) -> SweepState:
        launcher = stopper.launcher
        engine = make_engine(self.plan.search)
        slots = self.slots or make_slots(self.plan.spec.resources)
        launched, exhausted, stopping = 0, False, False
        last_flag_check = 0.0
        while True:
            now = time.time()
            if not stopping and now - last_flag_check > 0.5:
                last_flag_check = now
                if self.ledger.stop_requested(self.name):
                    self._signal = self._signal or signal.SIGINT
            if self._signal is not None and not stopping:
                stopping = True
                if self._detach(launcher):
                    return SweepState.DETACHED
                self.progress.note("stopping: SIGTERM to running trials")
                for live in self._live.values():
                    stopper.stop(live.run, INTERRUPTED)
            new_metrics = self._watch(launcher)
            if new_metrics and not stopping:
                self._early_stop(stopper, engine)
            for live in self._live.values():
                stopper.enforce(live.run, now)
            if not stopping:
                free = [s for s in slots if s.index not in {lv.slot.index for lv in
                                                              self._live.values()}]
                budget = None if self.max_trials is None else self.max_trials - launched
                n, exhausted = self._launch(launcher, engine, free, budget, exhausted)
                launched += n
            self.progress.refresh(self.ledger.trials(self.name), self._live)
            if not self._live:
                if stopping:
                    return SweepState.STOPPED
                pending = [t for t in self.ledger.trials(self.name)
                           if t.state == TrialState.PENDING]
                at_budget = self.max_trials is not None and launched >= self.max_trials
                if at_budget and (pending or not exhausted):
                    return SweepState.PAUSED
                if not pending and (exhausted or self._capped()):
                    return SweepState.FINISHED
            launcher.wait_any(TICK if self._live else 0.0)

    def _adopt(self, launcher: Launcher) -> set[int]:
        """Resume the watch on attempts a dead orchestrator left that run on (Slurm jobs);
        their trial ids. Validations the ledger already holds are not recorded twice."""
        if not isinstance(launcher, Adopter):
            return set()
        running = [t for t in self.ledger.trials(self.name) if t.state == TrialState.RUNNING]
        runs = launcher.adopt(running)
        slots = iter(self.slots or [])
        spec = self.plan.spec
        for t in running:
            run = runs.get(t.id)
            if run is None:
                continue
            slot = next(slots, None) or Slot(len(self.slots or []) + len(self._live), "slurm", {})
            tail = EventTail(run.run_dir / "events.jsonl")
            fresh = tail.poll()[len(self.ledger.history(t)):]
            self.ledger.record_progress(t.id, t.attempts, tail.step, tail.max_steps, fresh,
                                        spec.metric.name, spec.metric.goal)
            self._live[t.id] = Live(run, t, slot, tail, t.attempts)
            self._record_device(self._live[t.id])
        return set(runs)

    def _detach(self, launcher: Launcher) -> bool:
        """On Ctrl-C (not `orch stop`), whether to leave the jobs running, as on_interrupt says."""
        if (not isinstance(launcher, Adopter) or not self._live or self.on_interrupt is None
                or self.ledger.stop_requested(self.name)
                or not self.on_interrupt(len(self._live))):
            return False
        launcher.detach()
        self.progress.note(f"left {len(self._live)} job(s) running; `orch sweep` adopts them, "
                           f"`orch stop {self.name}` cancels them")
        return True

    def _capped(self) -> bool:
        cap = self.plan.spec.run_cap
        counted = [t for t in self.ledger.trials(self.name) if t.state != TrialState.INVALID]
        return cap is not None and len(counted) >= cap

    # -- launching --------------------------------------------------------------------------------

    def _launch(self, launcher: Launcher, engine: Engine, free: list[Slot],
                budget: int | None, exhausted: bool) -> tuple[int, bool]:
        """Fill free slots: pending trials first, then new suggestions. (launched, exhausted)"""
        started = 0
        for slot in free:
            if budget is not None and started >= budget:
                break
            trial = self._next_pending()
            if trial is None and not exhausted and not self._capped():
                exhausted = suggest(self.plan, self.ledger, engine, len(free) - started,
                                    self.progress.note)
                trial = self._next_pending()
            if trial is None:
                break
            self._start(launcher, trial, slot)
            started += 1
        return started, exhausted

    def _next_pending(self) -> Trial | None:
        """The next pending trial to launch; with `reuse`, pending trials another sweep already
        finished are recorded from there on the way (they need no slot)."""
        running = set(self._live)
        for t in self.ledger.trials(self.name):
            if t.state != TrialState.PENDING or t.id in running:
                continue
            reused = reuse(self.plan, self.ledger, t)
            if reused is None:
                return t
            self._histories[t.id] = [p.metrics for p in self.ledger.history(
                self.ledger.trial(t.id))]
            self.progress.note(reused)
        return None

    def _start(self, launcher: Launcher, trial: Trial, slot: Slot) -> None:
        attempt = trial.attempts + 1
        run_dir = attempt_dir(self.home, self.name, trial, attempt)
        command = TrialCommand(written(self.plan.spec.program), self.plan.base, run_dir,
                               self.plan.resolved(trial.params))
        aside = set_aside(run_dir)
        if aside is not None:
            self.progress.note(f"trial {trial.number}: the interrupted run's files moved to "
                               f"{aside}")
        write_trial_json(self.name, trial, attempt, command)
        run = launcher.start(Launch(
            trial_id=trial.id, number=trial.number, attempt=attempt, command=command,
            run_dir=run_dir, env=host_env(slot, self.home, run_dir),
            marker=self._marker(trial.id), device=slot.device))
        self.ledger.mark_running(trial.id, pid=run.pid, pgid=run.pgid, run_dir=str(run_dir),
                                 slot=slot.index, started_at=run.started, job=run.job)
        self._histories[trial.id] = []
        self._live[trial.id] = Live(run, self.ledger.trial(trial.id), slot,
                                    EventTail(run_dir / "events.jsonl"), attempt)
        # The slot is where orch put it; where it runs is what the program reports later.
        self.progress.note(f"trial {trial.number} started in slot {slot.device}: "
                           f"{trial.point}")

    # -- watching -------------------------------------------------------------------------------

    def _watch(self, launcher: Launcher) -> bool:
        """Tail events and reap ended trials; True when new validation metrics arrived."""
        spec = self.plan.spec
        fresh = False
        for trial_id, live in list(self._live.items()):
            code = launcher.reap(live.run)
            new = live.tail.poll()
            if new or live.tail.step is not None:
                self.ledger.record_progress(trial_id, live.attempt, live.tail.step,
                                            live.tail.max_steps, new, spec.metric.name,
                                            spec.metric.goal)
                self._histories[trial_id].extend(new)
                fresh = fresh or bool(new)
            self._record_device(live)
            trials = self.ledger.trials(self.name) if new else []
            for event in new:
                self.progress.validation(live.trial, event.get("step"), live.tail.max_steps,
                                         finite(event.get(spec.metric.name)), trials)
            if code is not None:
                record_end(self.plan, self.ledger, live, code, self.progress.note,
                           interrupted=self._signal is not None)
                del self._live[trial_id]
        return fresh

    def _record_device(self, live: Live) -> None:
        """Record the device the program reported, once; say so when it is not its slot's."""
        if live.tail.device is None or live.device is not None:
            return
        live.device = ran_on(live.tail.device, live.slot)
        self.ledger.set_device(live.trial.id, live.device)
        if live.device != live.slot.device and live.slot.device != "slurm":
            self.progress.note(f"trial {live.trial.number} runs on {live.device}, not on its "
                               f"slot's {live.slot.device} (its program says so)")

    def _early_stop(self, stopper: Stopper, engine: Engine) -> None:
        if not self.plan.spec.early_terminate:
            return
        metric = self.plan.spec.metric.name
        runs = []
        for t in self.ledger.trials(self.name):
            history = [{metric: h.get(metric)} for h in self._histories.get(t.id, [])]
            runs.append(engine.sweep_run(t, history))
        why = EARLY_STOP.replace("hyperband", self.plan.spec.early_terminate.get("type") or "")
        for name in engine.to_stop(runs):
            live = self._live.get(int(name))
            if live is not None and live.run.term_sent is None:
                stopper.stop(live.run, why)
                self.progress.note(f"trial {live.trial.number}: {why}")

