"""The Slurm controller the Slurm tests need (imported by the test modules that use it)."""

from __future__ import annotations

import os
import subprocess

import pytest

from orchestrator.launch.slurm import commands as slurm


@pytest.fixture(scope="module")
def cluster() -> None:
    """A Slurm controller that answers (start-slurm.sh); skip, or fail in CI, without one."""
    try:
        why = slurm.unavailable()
    except (OSError, subprocess.TimeoutExpired) as err:
        why = f"Slurm did not answer: {err}"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; CI starts one with ../shared/slurm/start-slurm.sh")
        pytest.skip(f"{why}; start one with bash ../shared/slurm/start-slurm.sh")
