"""The run loop: fill slots with trials, watch them, stop them, and record everything.

One thread, one loop: reap ended trials, tail their events, ask hyperband what to stop, enforce
timeouts, launch into free slots, draw progress, then sleep until a trial exits (pidfd) or a
short tick passes. Signals only set a flag the loop reads, so every ledger write happens in the
loop, in order, and an interrupted sweep leaves a consistent ledger.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orchestrator.contract import EXIT_BAD_INPUT, EventTail, Outcome, finite, judge, train_argv
from orchestrator.launch.dataprep import data_settings, prepare_on_host
from orchestrator.run.estimate import points_to_run
from orchestrator.launch.protocol import Adopter, DataPreparer, Launch, Launcher, Run
from orchestrator.launch.local import LocalLauncher
from orchestrator.ledger import Ledger, Trial, alive
from orchestrator.ledger_file import LedgerError, storage_fault
from orchestrator.spec.plan import Plan
from orchestrator.run.progress import Progress
from orchestrator.ledger_rebuild import write_outcome, write_sweep
from orchestrator.spec.rejections import group, no_new_point, one_line
from orchestrator.search import Engine
from orchestrator.states import INTERRUPTED, RETRYABLE, SweepState, TrialState
from orchestrator.run.slots import Slot, make_slots, queue_slots, ran_on, sweep_slots

TICK = 0.25  # seconds between looks at events.jsonl while trials run
EARLY_STOP = "early-terminated by hyperband"


class SweepBusy(Exception):
    """Another live orchestrator owns this sweep."""


def make_launcher(plan: Plan, home: Path, say: Callable[[str], None]) -> Launcher:
    """The launcher `spec.launcher.type` names (the Docker SDK is imported only for docker)."""
    if plan.spec.launcher.type == "docker":
        from orchestrator.launch.docker.launcher import DockerLauncher

        return DockerLauncher(plan, home, say)
    if plan.spec.launcher.type == "slurm":
        from orchestrator.launch.slurm.launcher import SlurmLauncher

        return SlurmLauncher(plan, home, say)
    return LocalLauncher(plan.spec.resources.kill_grace)


@dataclass
class Live:
    """A running attempt and what the loop knows about it."""

    run: Run
    trial: Trial
    slot: Slot
    tail: EventTail
    attempt: int
    device: str | None = None  # recorded from the program's device_info event


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
                live.run.term_sent = 0.0  # the loop's next enforce() sends SIGKILL
        self._signal = signum

    def run(self) -> int:
        """Run the sweep to its end or an interruption; the exit code for the CLI."""
        spec = self.plan.spec
        # Before the ledger is touched: an engine that is down or a failed build launches nothing.
        launcher = make_launcher(self.plan, self.home, self.progress.note)
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
            if t.attempts:
                self._histories[t.id] = [p.metrics for p in self.ledger.history(t)]
        todo = len(points_to_run(self.plan, self.ledger.trials(self.name), self.max_trials))
        self.progress.stage(f"launching {todo} trial(s) on {len(self.slots)} slot(s)")
        self.progress.set_eta(todo, len(self.slots))
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.progress.start()
        try:
            state = self._loop(launcher)
        except (LedgerError, OSError) as e:
            fault = e if isinstance(e, LedgerError) else storage_fault(e)
            if fault is None:
                raise
            self._stop_after_fault(launcher)
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
        if not settings:
            return
        row = self.ledger.sweep(self.name) or {}
        if alive(row.get("owner_pid"), row.get("owner_start")):  # busy: say so before the work
            raise SweepBusy(f"sweep {self.name} is running under pid {row['owner_pid']}; "
                            f"`orch stop {self.name}` stops it")
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

    def _stop_after_fault(self, launcher: Launcher) -> None:
        """The ledger or the disk failed mid-sweep: stop every trial (SIGTERM, SIGKILL after the
        grace period) without relying on the ledger, then record what still can be recorded.
        Whatever stays `running` belongs to a dead owner, so `orch sweep` re-runs it."""
        self.progress.note(f"stopping {len(self._live)} trial(s): the ledger or its disk failed")
        codes: dict[int, int] = {}
        for live in self._live.values():
            launcher.terminate(live.run, INTERRUPTED)
        while len(codes) < len(self._live):
            for trial_id, live in self._live.items():
                launcher.enforce(live.run, time.time())
                if trial_id not in codes:
                    code = launcher.reap(live.run)
                    if code is not None:
                        codes[trial_id] = code
            launcher.wait_any(TICK)
        with contextlib.suppress(LedgerError):
            for trial_id, code in codes.items():
                self.ledger.finish(trial_id, state=TrialState.STOPPED, reason=INTERRUPTED,
                                   exit_code=code, ended_at=time.time(), final=None, best=None,
                                   program_wall=time.time() - self._live[trial_id].run.started)
            self.ledger.release(self.name, SweepState.STOPPED)

    def _loop(self, launcher: Launcher) -> SweepState:
        engine = Engine(self.plan.search)
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
                    launcher.terminate(live.run, INTERRUPTED)
            new_metrics = self._watch(launcher, engine)
            if new_metrics and not stopping:
                self._early_stop(launcher, engine)
            for live in self._live.values():
                launcher.enforce(live.run, now)
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
                exhausted = self._suggest(engine, len(free) - started)
                trial = self._next_pending()
            if trial is None:
                break
            self._start(launcher, trial, slot)
            started += 1
        return started, exhausted

    def _next_pending(self) -> Trial | None:
        running = set(self._live)
        return next((t for t in self.ledger.trials(self.name)
                     if t.state == TrialState.PENDING and t.id not in running), None)

    def _suggest(self, engine: Engine, n: int) -> bool:
        """Add up to n pending trials from the engine; True when the search space is exhausted."""
        trials = self.ledger.trials(self.name)
        cap = self.plan.spec.run_cap
        if cap is not None:
            n = min(n, cap - len([t for t in trials if t.state != TrialState.INVALID]))
        known = {t.config_hash for t in trials}
        grid = {json.dumps(p, sort_keys=True): h for p, h in self.plan.grid or []}
        # Invalid grid points count as tried, so the engine moves past them.
        extra = [engine.point_run(p, TrialState.INVALID) for p, _ in self.plan.invalid]
        tries = 20 if self.plan.grid is None else len(self.plan.grid) + len(self.plan.invalid) + 1
        rejected: list[tuple[dict[str, Any], str, dict[str, Any]]] = []
        proposed = 0
        for _ in range(tries):
            runs = [engine.sweep_run(t) for t in self.ledger.trials(self.name)] + extra
            points = engine.suggest(runs, n)
            if points is None:
                return True
            proposed += len(points)
            if self.plan.grid is not None:
                # A grid point missing from the map resolved to the same config as another.
                verdicts = [{"ok": True, "config_hash": grid.get(json.dumps(p, sort_keys=True))}
                            for p in points]
            else:
                verdicts = self.plan.validator.check([self.plan.resolved(p) for p in points])
            added = 0
            for point, verdict in zip(points, verdicts):
                h = verdict.get("config_hash")
                if verdict.get("ok") and h and h not in known:
                    self.ledger.add_trial(self.name, h, point)
                    known.add(h)
                    added += 1
                elif verdict.get("ok"):
                    # A config already tried: shown to the engine as taken (pending), so grid
                    # moves on and bayes looks elsewhere.
                    extra.append(engine.point_run(point, TrialState.PENDING))
                else:
                    error = str(verdict.get("error"))
                    rejected.append((point, error, self.plan.resolved(point)))
                    key = "invalid-" + json.dumps(point, sort_keys=True)
                    if key not in known:
                        t = self.ledger.add_trial(self.name, key, point, TrialState.INVALID, error)
                        known.add(key)
                        self.progress.note(f"trial {t.number}: invalid, skipped: " + one_line(
                            point, error, self.plan.resolved(point), self.plan.varied))
            if added:
                return False
        self.progress.note(no_new_point(group(rejected, proposed, "proposals",
                                              self.plan.varied)))
        return True

    def _start(self, launcher: Launcher, trial: Trial, slot: Slot) -> None:
        attempt = trial.attempts + 1
        run_dir = self.home / "runs" / self.name / f"{trial.number:03d}-{trial.config_hash[:8]}"
        if attempt > 1:
            run_dir = run_dir.with_name(f"{run_dir.name}.a{attempt}")
        argv = train_argv(self.plan.program, self.plan.base, run_dir,
                          self.plan.resolved(trial.params))
        env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1",
               "ORCH_CACHE_DIR": os.environ.get("ORCH_CACHE_DIR") or str(self.home / "cache"),
               "WANDB_DIR": str(run_dir)}
        aside = set_aside(run_dir)
        if aside is not None:
            self.progress.note(f"trial {trial.number}: the interrupted run's files moved to "
                               f"{aside}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "trial.json").write_text(json.dumps(
            {"sweep": self.name, "trial": trial.number, "attempt": attempt,
             "config_hash": trial.config_hash, "params": trial.params, "argv": argv}, indent=2))
        run = launcher.start(Launch(
            trial_id=trial.id, number=trial.number, attempt=attempt, argv=argv, run_dir=run_dir,
            env=env, timeout=self.plan.spec.resources.timeout, marker=self._marker(trial.id),
            base=self.plan.base, point=self.plan.resolved(trial.params), device=slot.device))
        self.ledger.mark_running(trial.id, pid=run.pid, pgid=run.pgid, run_dir=str(run_dir),
                                 slot=slot.index, started_at=run.started, job=run.job)
        self._histories[trial.id] = []
        self._live[trial.id] = Live(run, self.ledger.trial(trial.id), slot,
                                    EventTail(run_dir / "events.jsonl"), attempt)
        # The slot is where orch put it; where it runs is what the program reports later.
        self.progress.note(f"trial {trial.number} started in slot {slot.device}: "
                           f"{_show(trial.params)}")

    # -- watching -------------------------------------------------------------------------------

    def _watch(self, launcher: Launcher, engine: Engine) -> bool:
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
                self._finish(live, code)
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

    def _finish(self, live: Live, code: int) -> None:
        run, ended = live.run, time.time()
        out = judge(code, run.run_dir, timed_out=run.timed_out, stop_reason=run.stop_reason)
        if run.verdict and out.state != TrialState.FINISHED and not run.timed_out \
                and run.stop_reason is None:  # what only the launcher saw (Slurm's time limit)
            out = Outcome(*run.verdict, out.result)
        # The launcher saw the OOM happen.
        if run.oom and out.state in (TrialState.FAILED, TrialState.KILLED):
            out = Outcome(TrialState.OOM, run.oom, out.result)
        result = out.result or {}
        final = result.get("final") if isinstance(result.get("final"), dict) else None
        best = result.get("best") if isinstance(result.get("best"), dict) else None
        if final is None and live.tail.validations:  # no result.json: the events still tell
            last = live.tail.validations[-1]
            names = self.plan.described.metric_names() or [self.plan.spec.metric.name]
            final = {k: last.get(k) for k in names}
        self.ledger.finish(live.trial.id, state=out.state, reason=out.reason, exit_code=code,
                           ended_at=ended, final=final, best=best,
                           program_wall=ended - run.started,
                           config=result.get("config") if isinstance(result.get("config"),
                                                                     dict) else None)
        write_outcome(run.run_dir, state=out.state, reason=out.reason, exit_code=code,
                      started_at=run.started, ended_at=ended, program_wall=ended - run.started)
        metric = finite((final or {}).get(self.plan.spec.metric.name))
        shown = f" {self.plan.spec.metric.name}={metric:.4f}" if metric is not None else ""
        self.progress.note(f"trial {live.trial.number} {out.state}{shown}"
                           + (f" ({out.reason})" if out.reason else ""))
        retries = self.plan.spec.resources.retries
        if (out.state in RETRYABLE and code != EXIT_BAD_INPUT and self._signal is None
                and live.attempt <= retries):
            self.ledger.requeue(live.trial.id, f"retry {live.attempt}/{retries} after: "
                                f"{out.reason}", refund_attempt=False)

    def _early_stop(self, launcher: Launcher, engine: Engine) -> None:
        if not self.plan.spec.early_terminate:
            return
        metric = self.plan.spec.metric.name
        runs = []
        for t in self.ledger.trials(self.name):
            history = [{metric: h.get(metric)} for h in self._histories.get(t.id, [])]
            runs.append(engine.sweep_run(t, history))
        for name in engine.to_stop(runs):
            live = self._live.get(int(name))
            if live is not None and live.run.term_sent is None:
                launcher.terminate(live.run, EARLY_STOP)
                self.progress.note(f"trial {live.trial.number}: {EARLY_STOP}")


def set_aside(run_dir: Path) -> Path | None:
    """Move what an interrupted launch left in run_dir to runs/SWEEP/interrupted/; where it went.

    The re-run of the attempt then starts with no events of the cut-short one (the trainer
    appends), and `orch sync` (runs/SWEEP/*/wandb) does not upload its partial W&B run.
    """
    if not run_dir.exists():
        return None
    aside = run_dir.parent / "interrupted"
    aside.mkdir(exist_ok=True)
    target = next(aside / f"{run_dir.name}.{n}" for n in itertools.count(1)
                  if not (aside / f"{run_dir.name}.{n}").exists())
    return run_dir.rename(target)


def _show(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "(base config)"

