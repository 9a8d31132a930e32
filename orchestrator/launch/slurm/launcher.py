"""The Slurm launcher: one batch job per trial attempt, submitted with plain `sbatch`.

Each attempt gets a batch script, RUN_DIR/job.sh, that holds every option as `#SBATCH` lines
(so it can be read, and resubmitted by hand to debug a trial), runs the spec's `setup`
lines, then `exec`s the trial command (under `container_prefix` when set) so that Slurm's
signals reach the trainer itself. Output goes to RUN_DIR/trial.log; the run dir, the base config
and the data cache must be on a filesystem the compute nodes share.

Jobs are named `orch:SWEEP:TRIAL` and carry `orch home=HASH sweep=SWEEP trial=N attempt=A` as
their comment, so orch finds exactly its own jobs (sacct by name; squeue by name and comment).
Their ids go into the ledger, and unlike local processes and containers, jobs outlive the
orchestrator: a resumed sweep adopts them (`adopt`), and a Ctrl-C may leave them running
(`detach`). Slurm's own requeue is off (--no-requeue): a preempted or lost job becomes a new
attempt of orch's, within resources.retries, with its own run dir.

How a job ended comes from accounting (sacct), else from the controller (scontrol). The exit
code then goes through the contract like any other launcher's; what only Slurm knows (its time
limit, its memory limit, a node failure, an scancel from outside) becomes `Run.verdict`.
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from signal import SIGTERM, Signals
from typing import TYPE_CHECKING, Callable

from orchestrator.launch.command import TrialCommand
from orchestrator.launch.protocol import MARKER, Launch, LauncherError, Run
from orchestrator.launch.slurm import commands as slurm
from orchestrator.ledger import Ledger
from orchestrator.states import INTERRUPTED, TrialState

if TYPE_CHECKING:
    from orchestrator.ledger import Trial
    from orchestrator.spec.model import LauncherSettings
    from orchestrator.spec.plan import Plan

LOST_AFTER = 120.0  # seconds a job may be unknown to squeue, sacct and scontrol before it is lost
QUICK_POLL = 0.5  # seconds between polls while a trial has written result.json (it is ending)
SCRIPT = "job.sh"


def home_tag(home: Path) -> str:
    """A short, stable id of an ORCH_HOME: the same sweep name in another home is another sweep."""
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


def job_name(sweep: str, number: int) -> str:
    """The Slurm job name of a trial (what `sacct --name` and `squeue --name` select on)."""
    return f"orch:{sweep}:{number}"


def is_ours(name: str, comment: str, sweep: str, home: Path) -> bool:
    """Whether a job (by its name and comment) is a trial of this sweep in this ORCH_HOME."""
    return name.startswith(f"orch:{sweep}:") and f"home={home_tag(home)} " in comment + " "


def slurm_time(text: str | None, timeout: float | None, grace: float) -> str | None:
    """The --time of a trial job: launcher.time as given (a bare number is minutes, as for
    sbatch; 30m, 2h are converted), else resources.timeout plus the kill grace plus a minute,
    so that orch's own timeout (precise, with its grace) acts first and Slurm's only backs it
    up while no orchestrator watches."""
    from orchestrator.spec.model import parse_duration

    if text:
        text = text.strip()
        if all(c.isdigit() or c in ":-" for c in text):
            return text
        seconds = parse_duration(text) or 0.0
        return str(max(1, math.ceil(seconds / 60)))
    if timeout is None:
        return None  # the partition's default limit
    return str(math.ceil((timeout + grace) / 60) + 1)


def verdict(state: slurm.JobState) -> tuple[TrialState, str] | None:
    """What Slurm alone knows about a job's end, as (trial state, reason); None when the exit
    code and result.json tell (COMPLETED, FAILED: the contract decides, e.g. diverged)."""
    how = f"Slurm: {state.state}" + (f" {state.detail}" if state.detail else "")
    if state.state in ("TIMEOUT", "DEADLINE"):
        return TrialState.TIMEOUT, f"{how} (the job's time limit, launcher.time)"
    if state.state == "OUT_OF_MEMORY":
        return TrialState.OOM, f"{how} (the job's memory limit, launcher.mem)"
    if state.state == "CANCELLED":
        return TrialState.STOPPED, f"{how}: cancelled outside orch (scancel)"
    if state.state in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "REVOKED", "LOST"):
        return TrialState.KILLED, f"{how} (retried within resources.retries)"
    return None


def directives(settings: LauncherSettings, time_limit: str | None, gpus: int) -> list[str]:
    """The resource options every job of a spec's launcher section gets, as sbatch arguments."""
    opts = [f"--cpus-per-task={settings.cpus_per_trial}", "--ntasks=1"]
    if gpus:
        opts.append(f"--gres=gpu:{gpus}")
    for flag, value in (("--partition", settings.partition), ("--account", settings.account),
                        ("--qos", settings.qos), ("--mem", settings.mem),
                        ("--time", time_limit)):
        if value:
            opts.append(f"{flag}={value}")
    return [*opts, *settings.sbatch_args]


def batch_script(title: str, options: list[str], setup: list[str], command: list[str],
                 prefix: str | None) -> str:
    """A batch script: #SBATCH options, the setup lines (a failing one fails the job), then the
    command exec'd (so signals reach it, not a waiting shell)."""
    lines = ["#!/bin/bash", f"# {title}"]
    # Double quotes keep a value with spaces one option; Slurm strips them.
    lines += [f'#SBATCH {o.split("=", 1)[0]}="{o.split("=", 1)[1]}"' if "=" in o and " " in o
              else f"#SBATCH {o}" for o in options]
    if setup:
        lines += ["set -e  # a failing setup line fails the job at once", *setup,
                  "set +e"]
    lines.append("exec " + (f"{prefix} " if prefix else "") + shlex.join(command))
    return "\n".join(lines) + "\n"


@dataclass(kw_only=True)
class SlurmRun(Run):
    """A trial attempt as a Slurm job."""

    job_id: str
    number: int
    cancel_sent: bool = False
    missing_since: float | None = None


class SlurmLauncher:
    """Submits trial jobs with sbatch and follows them with one squeue call per poll."""

    def __init__(self, plan: Plan, home: Path, say: Callable[[str], None]) -> None:
        self.settings = plan.spec.launcher
        self.sweep = plan.spec.name
        self.home = home
        self.say = say
        resources = plan.spec.resources
        self.time_limit = slurm_time(self.settings.time, resources.timeout, resources.kill_grace)
        self._runs: dict[str, SlurmRun] = {}
        self._ended: dict[str, slurm.JobState] = {}
        self._next_poll = self._last_poll = 0.0
        self._detached = False
        self._poll_error: str | None = None

    # -- before the first trial -----------------------------------------------------------------

    def prepare(self, devices: list[str]) -> None:
        """Check that a Slurm controller answers (and the partition exists)."""
        why = slurm.unavailable()
        if why:
            raise LauncherError(f"launcher.type slurm: {why}")
        part = self.settings.partition
        if part and not slurm.partition_exists(part):
            raise LauncherError(f"launcher.partition {part!r}: no such Slurm partition "
                                "(`sinfo -s` lists them)")
        self.say(describe(self.settings))

    def adopt(self, trials: list[Trial]) -> dict[int, Run]:
        """Take over the jobs of trials a dead orchestrator left `running`: those still queued or
        running, and those that ended unseen (their results are collected as they are). A job
        Slurm no longer knows is not adopted: its trial runs again."""
        jobs = {t.job: t for t in trials if t.job}
        if not jobs:
            return {}
        try:
            seen = slurm.queue(list(jobs))
            ended = slurm.final([j for j in jobs if j not in seen or seen[j].ended])
        except slurm.SlurmError as err:  # re-running instead could run a trial twice
            raise LauncherError(f"cannot adopt this sweep's Slurm jobs: {err}") from None
        adopted: dict[int, Run] = {}
        now = time.time()
        for job_id, t in jobs.items():
            state = ended.get(job_id) or seen.get(job_id)
            if state is None or not t.run_dir:
                continue
            run = SlurmRun(trial_id=t.id, number=t.number, run_dir=Path(t.run_dir),
                           started=state.start or t.started_at or now,
                           log=Path(t.run_dir) / "trial.log", job_id=job_id, job=job_id)
            self._runs[job_id] = run
            self._note_start(run, state.start)
            if state.ended:
                self._ended[job_id] = state
            adopted[t.id] = run
            self.say(f"trial {t.number}: adopted Slurm job {job_id} ({state.state}) left by a "
                     "dead orchestrator")
        return adopted

    def reap_orphans(self, marker: str) -> int:
        """Cancel this sweep's jobs that no ledger row names (an orchestrator killed between
        sbatch and its ledger write); adopted jobs are kept."""
        try:
            stray = [j for j, name, comment, _ in slurm.my_jobs()
                     if is_ours(name, comment, self.sweep, self.home) and j not in self._runs]
        except slurm.SlurmError as err:
            raise LauncherError(f"cannot list this sweep's Slurm jobs: {err}") from None
        slurm.cancel(stray)
        return len(stray)

    # -- one trial --------------------------------------------------------------------------------

    def command(self, launch: Launch) -> list[str]:
        """The trial command in the job. With setup lines or a container the program runs as
        the spec writes it (`python` is the job's, after `module load` or in the image);
        otherwise as on this machine, with this interpreter (on the shared filesystem)."""
        command = launch.command
        assert isinstance(command, TrialCommand)  # the Slurm launcher runs trials only
        if self.settings.setup or self.settings.container_prefix:
            return command.as_written()
        return command.host()

    def start(self, launch: Launch) -> SlurmRun:
        """Write RUN_DIR/job.sh and submit it; the job's output goes to RUN_DIR/trial.log."""
        run_dir = launch.run_dir.resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "trial.log"
        log.touch()
        options = [f"--job-name={job_name(self.sweep, launch.number)}",
                   f"--comment=orch home={home_tag(self.home)} sweep={self.sweep} "
                   f"trial={launch.number} attempt={launch.attempt}",
                   f"--output={log}", "--open-mode=append", f"--chdir={Path.cwd()}",
                   "--no-requeue", "--export=ALL",
                   *directives(self.settings, self.time_limit, self.settings.gpus_per_trial)]
        script = run_dir / SCRIPT
        script.write_text(batch_script(
            f"orch sweep {self.sweep}, trial {launch.number}, attempt {launch.attempt}",
            options, self.settings.setup, self.command(launch), self.settings.container_prefix))
        try:
            job_id = slurm.submit(script, self.job_env(launch))
        except slurm.SlurmError as err:
            raise LauncherError(f"submitting trial {launch.number}: {err}") from None
        now = time.time()
        run = SlurmRun(trial_id=launch.trial_id, number=launch.number, run_dir=run_dir,
                       started=now, log=log, job_id=job_id, job=job_id)
        self._runs[job_id] = run
        self.say(f"trial {launch.number}: Slurm job {job_id} submitted")
        return run

    def job_env(self, launch: Launch) -> dict[str, str]:
        """The job's environment (sbatch exports its own): orch's, the trial marker, and one
        CPU thread pool per allocated CPU; Slurm, not orch, decides CUDA_VISIBLE_DEVICES."""
        env = {k: v for k, v in launch.env.items() if k != "CUDA_VISIBLE_DEVICES"}
        env[MARKER] = launch.marker
        if "OMP_NUM_THREADS" not in os.environ:
            threads = str(self.settings.cpus_per_trial)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        return env

    # -- the loop's calls -----------------------------------------------------------------------

    def _note_start(self, run: SlurmRun, start: float | None) -> None:
        if start is not None and run.begun is None:
            # program_wall and orch's timeout count from here, not from the submission.
            run.begun = run.started = start

    def _refresh(self) -> None:
        """One squeue call for all live jobs, then one sacct call for those that left the queue:
        every launcher.poll seconds, or every QUICK_POLL while a trial has written its
        result.json (a cheap stat on the shared filesystem), so a normal end is seen at once
        without polling the controller often."""
        now = time.time()
        live = [j for j in self._runs if j not in self._ended]
        if now < self._next_poll and not (
                now >= self._last_poll + QUICK_POLL
                and any((self._runs[j].run_dir / "result.json").exists() for j in live)):
            return
        self._last_poll = now
        self._next_poll = now + self.settings.poll
        try:
            seen = slurm.queue(live)
            gone = [j for j in live if j not in seen or seen[j].ended]
            ended = slurm.final(gone)
        except slurm.SlurmError as err:  # a busy controller: try again next poll
            if str(err) != self._poll_error:
                self.say(f"polling Slurm failed (retrying): {err}")
            self._poll_error = str(err)
            return
        self._poll_error = None
        for job_id in live:
            run = self._runs[job_id]
            if job_id in ended:
                self._ended[job_id] = ended[job_id]
            elif job_id in seen and not seen[job_id].ended:
                run.missing_since = None
                self._note_start(run, seen[job_id].start)
            else:  # ended but not yet in accounting, or forgotten everywhere
                run.missing_since = run.missing_since or now
                if now - run.missing_since > LOST_AFTER:
                    self._ended[job_id] = slurm.JobState(job_id, "LOST",
                                                         "(no record in squeue, sacct, scontrol)")

    def wait_any(self, timeout: float) -> None:
        """Sleep `timeout` seconds: Slurm has no event to wait on (polls are rate-limited)."""
        time.sleep(timeout)

    def signal(self, run: Run, sig: Signals) -> None:
        """SIGTERM to every process of the job (a queued job is simply cancelled); SIGKILL
        cancels the job (Slurm's own TERM, then KILL after its KillWait), once."""
        assert isinstance(run, SlurmRun)
        # --signal fails on a job that has not started: then cancel it outright.
        if sig == SIGTERM and run.begun is not None and slurm.cancel([run.job_id],
                                                                     signal="TERM"):
            return
        self._cancel(run)

    def _cancel(self, run: SlurmRun) -> None:
        if not run.cancel_sent:
            run.cancel_sent = True
            slurm.cancel([run.job_id])

    def reap(self, run: Run) -> int | None:
        """The job's exit code once Slurm records its end (run.verdict says what Slurm saw)."""
        assert isinstance(run, SlurmRun)
        self._refresh()
        state = self._ended.pop(run.job_id, None)
        if state is None:
            return None
        del self._runs[run.job_id]
        run.verdict = verdict(state)
        code = state.code
        return -9 if code is None else code

    def detach(self) -> None:
        """Leave the live jobs running (the run loop says so); a resume adopts them."""
        self._detached = True

    def close(self) -> None:
        """Forget the jobs. None are left after a normal end or a stop; after an error they run
        on, as after a kill -9: the ledger holds their ids, so a resume adopts them and
        `orch stop` cancels them (cancelling here would leave the ledger saying `running`)."""
        left = [j for j in self._runs if j not in self._ended]
        if left and not self._detached:
            self.say(f"{len(left)} Slurm job(s) left running ({', '.join(left)}): `orch sweep` "
                     f"adopts them, `orch stop {self.sweep}` cancels them")
        self._runs.clear()


def cancel_sweep(ledger: Ledger, name: str, home: Path) -> int:
    """`orch stop` with no orchestrator alive: cancel the sweep's queued and running jobs and
    mark their trials stopped (interrupted, so a resume runs them again). Jobs that already
    ended stay `running` in the ledger: a resume adopts them and collects their results."""
    trials = {t.job: t for t in ledger.trials(name) if t.state == TrialState.RUNNING and t.job}
    alive = {j for j, s in slurm.queue(list(trials)).items() if not s.ended}
    stray = [j for j, n, comment, _ in slurm.my_jobs()
             if is_ours(n, comment, name, home) and j not in trials]
    slurm.cancel(sorted(alive) + stray)
    now = time.time()
    for job_id in alive:
        ledger.finish(trials[job_id].id, state=TrialState.STOPPED, reason=INTERRUPTED,
                      exit_code=None, ended_at=now, final=None, best=None, program_wall=None)
    return len(alive) + len(stray)


def describe(settings: LauncherSettings) -> str:
    """One line about where trials go, for the sweep's first note."""
    where = settings.partition or "the default partition"
    return (f"Slurm jobs on {where}, {settings.max_concurrent} in flight, "
            f"{settings.cpus_per_trial} CPU(s)" + (f" + {settings.gpus_per_trial} GPU(s)"
                                                    if settings.gpus_per_trial else "")
            + " each")
