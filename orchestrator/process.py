"""A process named for good: its pid and its start time, so that a reused pid is not mistaken
for the process that once had it (how the ledger tells a live sweep owner from a dead one)."""

from __future__ import annotations

from pathlib import Path


def process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot) or None if there is no such pid.

    With the pid it names one process for good: a pid reused later has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces, so split after its closing paren.
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int | None, start: str | None) -> bool:
    """Whether the process recorded as (pid, start time) is still running."""
    return pid is not None and start is not None and process_start(pid) == start
