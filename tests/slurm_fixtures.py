"""The Slurm controller the Slurm tests need (imported by the test modules that use it)."""

from __future__ import annotations

import subprocess

import pytest
from orch_helpers import unavailable

from orchestrator.launch.slurm import commands as slurm


@pytest.fixture(scope="module")
def cluster() -> None:
    """A Slurm controller that answers (start-slurm.sh); skip, or fail in CI, without one."""
    try:
        why = slurm.unavailable()
    except (OSError, subprocess.TimeoutExpired) as err:
        why = f"Slurm did not answer: {err}"
    if why:
        unavailable(f"{why}; start one with bash ../shared/slurm/start-slurm.sh",
                    "CI starts one with ../shared/slurm/start-slurm.sh")
