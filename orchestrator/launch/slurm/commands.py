"""Slurm's command-line tools as typed calls: sbatch, squeue, sacct, scontrol, scancel.

Only the client commands every Slurm login node has are used (no Slurm REST API, no pyslurm), so
orch needs nothing installed on the cluster. Each function is one call covering many jobs, so a
sweep polls the controller once per interval however many trials it has in flight.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

CALL_TIMEOUT = 60.0  # a busy slurmctld can take many seconds to answer; never hang the loop on it
# Job states after which nothing more happens to a job (squeue -t all, sacct, scontrol).
ENDED = {"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "PREEMPTED",
         "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
         "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
         "RESV_DEL_HOLD"}


class SlurmError(Exception):
    """A Slurm command failed: the command and what it printed."""


@dataclass
class JobState:
    """What Slurm says about one job: its state, and once it ended, how."""

    job_id: str
    state: str  # the first word: `CANCELLED by 0` -> CANCELLED
    detail: str = ""  # the rest (`by 0`), for messages
    start: float | None = None  # unix time it started running (None while pending)
    exit_code: int | None = None  # the batch script's exit code, once ended
    signal: int = 0  # the signal that ended it (0: none)

    @property
    def ended(self) -> bool:
        """Whether the job is over (nothing of it runs any more)."""
        return self.state in ENDED

    @property
    def code(self) -> int | None:
        """The exit code the way subprocess reports it: negative for a signal."""
        if self.signal:
            return -self.signal
        return self.exit_code


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=CALL_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(f"`{argv[0]}` not found: run orch on a Slurm login node") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(argv[:3])} ...` got no answer in {CALL_TIMEOUT:.0f} s "
                         "(slurmctld busy or down?)") from None


def _check(proc: subprocess.CompletedProcess[str], argv: list[str]) -> str:
    if proc.returncode != 0:
        raise SlurmError(f"`{' '.join(argv[:4])} ...` exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()[-600:]}")
    return proc.stdout


def _time(text: str) -> float | None:
    """Slurm's local timestamps (2024-05-01T12:00:00); Unknown/None/N/A are None."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def _exit(text: str) -> tuple[int | None, int]:
    """`CODE:SIGNAL` (sacct, scontrol) as (code, signal)."""
    code, _, sig = text.strip().partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, 0


def unavailable() -> str | None:
    """Why Slurm cannot be used from here, or None when a controller answers."""
    if shutil.which("sbatch") is None:
        return "`sbatch` is not on PATH (run orch on a Slurm login node)"
    try:
        proc = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`scontrol ping` failed: {err}"
    if proc.returncode != 0 or "UP" not in proc.stdout:
        return f"no Slurm controller answers `scontrol ping`: {proc.stdout.strip()[-300:]}"
    return None


def submit(script: Path, env: dict[str, str], args: list[str] = ()) -> str:
    """`sbatch --parsable [ARGS] SCRIPT` with `env` as the job's environment; the job id."""
    argv = ["sbatch", "--parsable", *args, str(script)]
    out = _check(_run(argv, env), argv).strip()
    # --parsable prints `id` or `id;cluster`; warnings may come on lines before it.
    return out.splitlines()[-1].split(";")[0].strip()


def queue(job_ids: list[str]) -> dict[str, JobState]:
    """squeue's view (recently ended jobs included) of these jobs; ids it does not know are
    missing from the answer (purged after MinJobAge, or never existed)."""
    if not job_ids:
        return {}
    argv = ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%S"]
    proc = _run(argv)
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:  # only when none of them is known any more
            return {}
        _check(proc, argv)
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            state = parts[1].strip()
            found[parts[0]] = JobState(parts[0], state,
                                       start=_time(parts[2]) if state != "PENDING" else None)
    return found


def accounting(job_ids: list[str]) -> dict[str, JobState]:
    """sacct's records of these jobs (the allocation line of each); {} without accounting."""
    if not job_ids:
        return {}
    argv = ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o",
            "JobID,State,ExitCode,Start"]
    proc = _run(argv)
    if proc.returncode != 0:
        return {}  # accounting disabled or slurmdbd down: scontrol still knows recent jobs
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 4:
            continue
        word, _, detail = parts[1].partition(" ")
        code, sig = _exit(parts[2])
        found[parts[0]] = JobState(parts[0], word, detail, _time(parts[3]), code, sig)
    return found


def controller(job_id: str) -> JobState | None:
    """`scontrol show job` (the controller's memory: jobs that ended < MinJobAge ago)."""
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode != 0:
        return None
    fields = dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)
    if "JobState" not in fields:
        return None
    code, sig = _exit(fields.get("ExitCode", ""))
    return JobState(job_id, fields["JobState"], fields.get("Reason", ""),
                    _time(fields.get("StartTime", "")), code, sig)


def final(job_ids: list[str]) -> dict[str, JobState]:
    """How these jobs ended: sacct's record, else the controller's; jobs neither has seen end
    yet (accounting lags the controller by a moment) are missing from the answer."""
    found = {j: s for j, s in accounting(job_ids).items() if s.ended}
    for job_id in job_ids:
        if job_id not in found:
            state = controller(job_id)
            if state is not None and state.ended:
                found[job_id] = state
    return found


def cancel(job_ids: list[str], signal: str | None = None) -> bool:
    """scancel: the whole job (Slurm's SIGTERM, then SIGKILL after its KillWait), or only
    `signal` to every process of it, the batch script included (--full). False on an error,
    e.g. signalling a job that has not started."""
    if not job_ids:
        return True
    argv = ["scancel", *([f"--signal={signal}", "--full"] if signal else []), *job_ids]
    return _run(argv).returncode == 0


def my_jobs() -> list[tuple[str, str, str, str]]:
    """(job id, name, comment, state) of this user's queued and running jobs."""
    argv = ["squeue", "-h", "--me", "-o", "%i|%j|%T|%k"]
    out = _check(_run(argv), argv)
    rows = []
    for line in out.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            rows.append((parts[0], parts[1], parts[3], parts[2]))
    return rows


def partition_exists(name: str) -> bool:
    """Whether the cluster has this partition (`sinfo -h -p NAME` prints it)."""
    proc = _run(["sinfo", "-h", "-p", name, "-o", "%P"])
    return proc.returncode == 0 and bool(proc.stdout.strip())
