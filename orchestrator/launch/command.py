"""What a launch runs, as a value each launcher renders once for where it runs.

A trial's command has the trainer contract's shape, `PROGRAM --config F --out D k=v...`. The run
loop makes one TrialCommand per attempt, with this machine's paths and the program as the spec
writes it; the local launcher runs `host()`, the Docker launcher renders it with the container's
paths (/orch/...), the Slurm launcher writes one of the two into the batch script.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator.contract import format_value, program_argv


def written(program: str | list[str]) -> list[str]:
    """The spec's program as an argv list, as written (program_argv makes it this machine's)."""
    return shlex.split(program) if isinstance(program, str) else list(program)


class Command(Protocol):
    """Anything a launcher can run: a trial (TrialCommand) or a W&B agent (AgentCommand)."""

    def host(self) -> list[str]:
        """The command line on this machine."""


def prepare_command(program: list[str], config: str, sets: dict[str, Any]) -> list[str]:
    """`PROGRAM prepare --config CONFIG KEY=VALUE...`: fill the data cache for one data setting
    (on the host or in a container: the caller gives the program and path as seen there)."""
    return [*program, "prepare", "--config", config, *assignments(sets)]


def assignments(sets: dict[str, Any]) -> list[str]:
    """Dotted overrides as the contract's command lines take them: `key=value`."""
    return [f"{key}={format_value(value)}" for key, value in sets.items()]


@dataclass(frozen=True)
class TrialCommand:
    """One trial attempt's command: PROGRAM --config CONFIG --out OUT KEY=VALUE..."""

    program: list[str]  # as the spec writes it: a leading `python` is whichever the world has
    config: Path  # the base config, as this machine sees it
    out: Path  # the run dir, as this machine sees it
    overrides: dict[str, Any]  # the trial's dotted keys, resolved

    def render(self, program: list[str], config: str, out: str,
               overrides: dict[str, Any] | None = None) -> list[str]:
        """The command line with the program and paths of where it runs (`overrides`: these
        instead of the trial's, e.g. with a data path the container sees)."""
        sets = self.overrides if overrides is None else overrides
        return [*program, "--config", config, "--out", out, *assignments(sets)]

    def host(self) -> list[str]:
        """The command line here: `python` is this interpreter (contract.program_argv)."""
        return self.render(program_argv(self.program), str(self.config), str(self.out))

    def as_written(self) -> list[str]:
        """The program as the spec writes it, with this machine's paths (a batch job's own
        `python` after its setup lines, on a filesystem the nodes share)."""
        return self.render(self.program, str(self.config), str(self.out))
