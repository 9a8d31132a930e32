"""The states a trial and a sweep can be in: the words the ledger stores and the reports print.

Both enums are `str` enums, so a member equals its value: ledgers and JSON written before (plain
strings) stay valid, and a member prints, formats and binds into SQLite as its value.
"""

from __future__ import annotations

from enum import Enum


class TrialState(str, Enum):
    """The state of one trial; the order is the order summaries list them in."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    DIVERGED = "diverged"
    FAILED = "failed"
    OOM = "oom"
    TIMEOUT = "timeout"
    KILLED = "killed"
    INVALID = "invalid"  # the program's validate refused its point: never launched

    def __str__(self) -> str:
        return self.value


class SweepState(str, Enum):
    """The state of one sweep, as `orch ls` and `orch status` show it."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"  # at --max-trials with points left: `orch sweep` goes on
    STOPPED = "stopped"
    DETACHED = "detached"  # the orchestrator left; its Slurm jobs run on
    FINISHED = "finished"
    REBUILT = "rebuilt"  # recreated from run dirs by `orch ledger rebuild`
    ON_WANDB = "running on W&B"
    INTERRUPTED = "interrupted"  # shown for `running` under a dead orchestrator; never stored

    def __str__(self) -> str:
        return self.value


# A resumed sweep leaves these alone (a stop by the user, reason INTERRUPTED, is not terminal).
TERMINAL = frozenset({TrialState.FINISHED, TrialState.FAILED, TrialState.DIVERGED,
                      TrialState.TIMEOUT, TrialState.OOM, TrialState.KILLED, TrialState.STOPPED,
                      TrialState.INVALID})
# The run loop tries these again, within resources.retries.
RETRYABLE = frozenset({TrialState.FAILED, TrialState.OOM, TrialState.KILLED})
INTERRUPTED = "interrupted"  # the reason of a `stopped` trial that a resume runs again
