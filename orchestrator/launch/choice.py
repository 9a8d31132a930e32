"""Which launcher runs a sweep's trials: the one `spec.launcher.type` names."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.protocol import Launcher
from orchestrator.spec.plan import Plan


def make_launcher(plan: Plan, home: Path, say: Callable[[str], None]) -> Launcher:
    """The launcher `spec.launcher.type` names (the Docker SDK is imported only for docker)."""
    if plan.spec.launcher.type == "docker":
        from orchestrator.launch.docker.launcher import DockerLauncher

        return DockerLauncher(plan, home, say)
    if plan.spec.launcher.type == "slurm":
        from orchestrator.launch.slurm.launcher import SlurmLauncher

        return SlurmLauncher(plan, home, say)
    if plan.spec.launcher.type == "replay":
        from orchestrator.launch.replay import ReplayLauncher

        return ReplayLauncher(str(plan.spec.launcher.from_), plan.doc.path.parent, home)
    return LocalLauncher()
